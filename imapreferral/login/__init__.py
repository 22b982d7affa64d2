"""
The protocol-agnostic login core: passdb replies, the referral rule, the
cred checker and the login attempt. Nothing here knows about IMAP.
"""
