"""API keys: creation (shown once), hashed lookup, listing and revocation."""
