"""Who may use the Doorman: the API key store (named, hashed keys with scopes and limits)."""
