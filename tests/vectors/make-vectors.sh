#!/bin/sh
# Regenerate doveadm-pw.txt: hashes made by Dovecot's own `doveadm pw`.
#
#   sh tests/vectors/make-vectors.sh > tests/vectors/doveadm-pw.txt
#
# -O: read no dovecot.conf (no config is needed to hash; this also works
# where /etc/dovecot is missing or unreadable). Hashes are salted, so each
# run gives new lines; any run's output is a valid vector file.
set -eu

SCHEMES="PLAIN CLEAR CLEARTEXT PLAIN-MD5 LDAP-MD5 SHA SHA1 SSHA SHA256 SSHA256
SHA512 SSHA512 SMD5 CRYPT DES-CRYPT MD5 MD5-CRYPT SHA256-CRYPT SHA512-CRYPT
BLF-CRYPT ARGON2I ARGON2ID PBKDF2 CRAM-MD5 HMAC-MD5
PLAIN.B64 PLAIN.HEX PLAIN-MD5.B64 LDAP-MD5.HEX SHA.HEX SSHA.HEX SHA256.HEX
SSHA256.HEX SHA512.HEX SSHA512.HEX CRAM-MD5.B64 SSHA.B64"

row() { # scheme password
    printf '%s\t%s\t%s\n' "$1" "$2" "$(doveadm -O pw -s "$1" -p "$2")"
}

echo "# Made by tests/vectors/make-vectors.sh with Dovecot $(dovecot --version 2>/dev/null || echo "(version unknown)")."
echo "# scheme<TAB>password (UTF-8)<TAB>doveadm pw output"
for scheme in $SCHEMES; do
    row "$scheme" 'pässwörd'
    row "$scheme" 'p@ss w0rd$1'
done
# RFC 2195 section 2's example secret, for CRAM-MD5 responses.
row PLAIN tanstaaftanstaaf
row CRAM-MD5 tanstaaftanstaaf
# DES crypt(3) reads 8 bytes, bcrypt 72: longer passwords are cut.
row DES-CRYPT 'longer than eight'
row BLF-CRYPT '0123456789012345678901234567890123456789012345678901234567890123456789012345678'
