"""The running Doorman: the ``slm serve`` start sequence and the service state it builds."""
