"""The IMAP face of the login core: URLs, wording, the server protocol."""
