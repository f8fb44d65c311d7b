"""Test helpers: real servers the tests talk to (OpenSSH sshd on loopback)."""
