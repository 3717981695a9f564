"""service-slm, the Doorman: the one gateway for every language-model call on the appliance."""

__version__ = "0.1.0"
