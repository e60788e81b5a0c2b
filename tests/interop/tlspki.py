"""Certificates for the TLS cases, made at test time with GnuTLS's certtool.

Files are named as nbdkit, qemu and libnbd expect them in a credentials directory:
ca-cert.pem, server-cert.pem + server-key.pem, client-cert.pem + client-key.pem.
Keys are RSA 2048 (PKCS#1 PEM, certtool's default); certificates name localhost and
127.0.0.1. Everything is made once per run, in a temporary directory removed at exit.
"""

import atexit
import functools
import os
import shutil
import tempfile

from util import run

TEMPLATES = {
    "ca": "cn = {cn}\nca\ncert_signing_key\ncrl_signing_key\nexpiration_days = 2\n",
    "server": ("organization = nbdx interop\ncn = localhost\ndns_name = localhost\n"
               "ip_address = 127.0.0.1\ntls_www_server\nencryption_key\nsigning_key\nexpiration_days = 2\n"),
    "client": "organization = nbdx interop\ncn = alice\ntls_www_client\nencryption_key\nsigning_key\n"
              "expiration_days = 2\n",
}


def _certtool(*args):
    run(["certtool", *args], timeout=60)


class Ca:
    """A certificate authority in `root/name`."""

    def __init__(self, root, name):
        self.dir = os.path.join(root, name)
        os.makedirs(self.dir)
        self.key = self._key("ca")
        self.cert = os.path.join(self.dir, "ca-cert.pem")
        template = self._template("ca", cn=f"nbdx interop {name}")
        _certtool("--generate-self-signed", "--load-privkey", self.key, "--template", template,
                  "--outfile", self.cert)

    def _key(self, kind):
        path = os.path.join(self.dir, f"{kind}-key.pem")
        _certtool("--generate-privkey", "--key-type=rsa", "--bits=2048", "--outfile", path)
        return path

    def _template(self, kind, **values):
        path = os.path.join(self.dir, f"{kind}.info")
        with open(path, "w") as f:
            f.write(TEMPLATES[kind].format(**values))
        return path

    def issue(self, kind):
        """(certificate, key) paths of a new `server` or `client` certificate."""
        key = self._key(kind)
        cert = os.path.join(self.dir, f"{kind}-cert.pem")
        _certtool("--generate-certificate", "--load-ca-certificate", self.cert, "--load-ca-privkey", self.key,
                  "--load-privkey", key, "--template", self._template(kind), "--outfile", cert)
        return cert, key


class Pki:
    """Credential directories: `server_dir(...)` and `client_dir(...)`, by trust and signer."""

    def __init__(self):
        self.root = tempfile.mkdtemp(prefix="nbdx-pki-")
        atexit.register(shutil.rmtree, self.root, True)
        self.ca = Ca(self.root, "ca")
        self.rogue = Ca(self.root, "rogue-ca")
        self.issued = {}
        self.dirs = {}

    def _issued(self, ca, kind):
        key = (ca.dir, kind)
        if key not in self.issued:
            self.issued[key] = ca.issue(kind)
        return self.issued[key]

    def _dir(self, name, trust, cert=None):
        if name in self.dirs:
            return self.dirs[name]
        path = os.path.join(self.root, name)
        os.makedirs(path)
        shutil.copy(trust.cert, os.path.join(path, "ca-cert.pem"))
        if cert:
            ca, kind = cert
            crt, key = self._issued(ca, kind)
            shutil.copy(crt, os.path.join(path, f"{kind}-cert.pem"))
            shutil.copy(key, os.path.join(path, f"{kind}-key.pem"))
        self.dirs[name] = path
        return path

    def server_dir(self, rogue=False):
        """A server's directory: trusts the CA; its certificate is the CA's (or the rogue CA's)."""
        signer = self.rogue if rogue else self.ca
        return self._dir("server-rogue" if rogue else "server", self.ca, (signer, "server"))

    def client_dir(self, cert=None):
        """A client's directory trusting the CA; cert: None, "ca" or "rogue" (who signed its certificate)."""
        signer = {None: None, "ca": self.ca, "rogue": self.rogue}[cert]
        return self._dir(f"client-{cert}", self.ca, (signer, "client") if signer else None)


@functools.lru_cache(maxsize=None)
def pki():
    """The run's certificates, made on first use."""
    return Pki()
