"""Profiles: how each implementation of an NBD server is started.

A profile turns a `servers.Server` description (exports and their sources, Unix socket
or TCP port, read-only, description, pidfile) into a command line:

* `nbdx`: `target/release/nbdx serve ...` (or $NBDX_BIN), the contract of issue 2;
* `nbdkit`: `nbdkit -f ... memory SIZE`, with filters where needed, to validate the
  suite against a reference server;
* `qemu-nbd`: `qemu-nbd ...` serving sparse files (one export; no memory device).

`features` says what an implementation can do (cases needing a missing one skip and
say why); `expected_failures` names cases that fail on a known bug of a reference server.
"""

import os
import subprocess

from util import ROOT, qemu_version, size_arg


class Profile:
    """An implementation of the server under test."""

    name = "?"
    #: What the implementation can do; a case that needs a missing feature skips and says why.
    features = frozenset()
    #: Cases known to fail because of a bug of the implementation: {case name: the bug}.
    #: They are reported as XFAIL (not as passed); if one passes, that is a failure (XPASS).
    expected_failures = {}

    def check(self):
        """Raises RuntimeError when the server cannot run here at all."""

    def argv(self, srv):
        raise NotImplementedError

    def refuse_extra_args(self, srv):
        """Options of the nbdx command line mean nothing to another server."""
        if srv.extra_args:
            raise RuntimeError(f"{self.name} does not take the nbdx options {' '.join(srv.extra_args)}")

    def missing(self, feature):
        """The reason a feature is missing, or None when it is there."""
        return None if feature in self.features else f"{self.name} cannot do this ({feature})"


class NbdxProfile(Profile):
    name = "nbdx"
    features = frozenset({
        "memory", "null", "file", "names", "multi-export", "description", "block-size",
        "extended-headers", "fast-zero", "pidfile", "print-uri", "nbdx-cli", "prompt-stop",
        "tls", "tls-on", "tls-only", "tls-psk",
    })

    def __init__(self, binary=None):
        self.binary = binary or os.environ.get("NBDX_BIN") or os.path.join(ROOT, "target/release/nbdx")

    def check(self):
        if not os.access(self.binary, os.X_OK):
            raise RuntimeError(f"{self.binary} does not exist; build it with `cargo build --release`")

    @staticmethod
    def source(src):
        if src.kind == "file":
            return f"file:{src.path}"
        return f"{src.kind}:{size_arg(src.size)}"

    def argv(self, srv):
        args = [self.binary, "serve"]
        if srv.unix:
            args += ["-U", srv.socket_path]
        else:
            args += ["-i", "127.0.0.1", "-p", str(srv.port)]
        if srv.read_only:
            args.append("-r")
        if srv.description is not None:
            args += ["-d", srv.description]
        if srv.pidfile:
            args += ["--pidfile", srv.pidfile]
        if srv.tls:
            args += [f"--tls={srv.tls.mode}"]
            args += ["--tls-psk", srv.tls.psk] if srv.tls.psk else ["--tls-certificates", srv.tls.dir]
            args += ["--tls-verify-peer"] if srv.tls.verify_peer else []
            args += [arg for name in srv.tls.tls_only for arg in ("--tls-only", name)]
        args += list(srv.extra_args)
        if len(srv.exports) == 1:
            (exp,) = srv.exports
            if exp.name:
                args += ["-e", exp.name]
            args.append(self.source(exp.source))
        else:
            for exp in srv.exports:
                args += ["--export", f"{exp.name}={self.source(exp.source)}"]
        return args


class NbdkitProfile(Profile):
    name = "nbdkit"
    # nbdkit 1.32 has no extended headers, no --print-uri and no nbdx command line, and on
    # SIGTERM it waits for connected clients to go away ("prompt-stop").
    features = frozenset({
        "memory", "null", "file", "names", "multi-export", "description", "block-size",
        "fast-zero", "pidfile", "tls", "tls-on", "tls-psk",
    })
    expected_failures = {
        "a_client_killed_with_large_reads_in_flight_leaves_the_server_serving_intact_data":
            "nbdkit 1.32 aborts when a client dies while replies to several of its reads are "
            "being sent (connections.c: raw_send_socket: Assertion `sock >= 0' failed)",
    }

    def check(self):
        subprocess.run(["nbdkit", "--version"], check=True, capture_output=True, timeout=30)

    def argv(self, srv):
        self.refuse_extra_args(srv)
        args = ["nbdkit", "-f", "--exit-with-parent"]
        if srv.unix:
            args += ["-U", srv.socket_path]
        else:
            args += ["-i", "127.0.0.1", "-p", str(srv.port)]
        if srv.read_only:
            args.append("-r")
        if srv.pidfile:
            args += ["-P", srv.pidfile]
        if srv.tls:
            args += [f"--tls={srv.tls.mode}"]
            args += [f"--tls-psk={srv.tls.psk}"] if srv.tls.psk else [f"--tls-certificates={srv.tls.dir}"]
            args += ["--tls-verify-peer"] if srv.tls.verify_peer else []
        filters = ["--filter=exportname", "--filter=blocksize-policy"]
        params = ["blocksize-minimum=1", "blocksize-preferred=4096",
                  "blocksize-maximum=33554432", "blocksize-error-policy=error"]
        # To check that cases catch faults: e.g. NBDX_INTEROP_NBDKIT_FILTERS=error
        # NBDX_INTEROP_NBDKIT_PARAMS='error-pwrite-rate=1%'.
        filters += [f"--filter={f}" for f in os.environ.get("NBDX_INTEROP_NBDKIT_FILTERS", "").split()]
        params += os.environ.get("NBDX_INTEROP_NBDKIT_PARAMS", "").split()
        if srv.description is not None:
            params.append(f"exportdesc=fixed:{srv.description}")
        if len(srv.exports) == 1:
            (exp,) = srv.exports
            params += [f"exportname={exp.name}", "exportname-strict=true", "exportname-list=explicit"]
            src = exp.source
            plugin = ["file", src.path] if src.kind == "file" else [src.kind, str(src.size)]
        else:
            # The file plugin serves every file of a directory, named after the file; the
            # exportname filter lists them in order and maps "" to the first.
            plugin = ["file", f"dir={srv.backing_dir()}"]
            params += [f"default-export={srv.exports[0].name}", "exportname-list=explicit"]
            params += [f"exportname={exp.name}" for exp in srv.exports]
        return args + filters + plugin + params


class QemuNbdProfile(Profile):
    name = "qemu-nbd"
    features = frozenset({"memory", "file", "names", "description", "block-size", "pidfile", "tls"})
    expected_failures = {
        "request_errors_keep_the_connection_alive":
            "qemu-nbd answers a write beyond the end with EINVAL (proto.md: SHOULD be ENOSPC)",
        "a_read_only_export_refuses_writes_with_eperm_and_serves_reads":
            "qemu-nbd answers a write to a read-only export with EINVAL (proto.md: SHOULD be EPERM)",
    }

    def __init__(self):
        if qemu_version() >= (8, 2):
            self.features = self.features | {"extended-headers"}

    def check(self):
        subprocess.run(["qemu-nbd", "--version"], check=True, capture_output=True, timeout=30)

    def argv(self, srv):
        self.refuse_extra_args(srv)
        if len(srv.exports) != 1:
            raise RuntimeError("qemu-nbd serves one export")
        (exp,) = srv.exports
        args = ["qemu-nbd", "-f", "raw", "--persistent", "--shared=16", "--discard=unmap",
                "--detect-zeroes=off", "--cache=writeback", "-x", exp.name]
        if srv.unix:
            args += ["-k", srv.socket_path]
        else:
            args += ["-b", "127.0.0.1", "-p", str(srv.port)]
        if srv.read_only:
            args.append("-r")
        if srv.description is not None:
            args += ["-D", srv.description]
        if srv.pidfile:
            args += ["--pid-file", srv.pidfile]
        if srv.tls:
            # qemu-nbd has one TLS mode: required.
            verify = "on" if srv.tls.verify_peer else "off"
            args += ["--object", f"tls-creds-x509,id=tls0,dir={srv.tls.dir},endpoint=server,verify-peer={verify}",
                     "--tls-creds", "tls0"]
        return args + [srv.backing_file(exp)]


PROFILES = {"nbdx": NbdxProfile, "nbdkit": NbdkitProfile, "qemu-nbd": QemuNbdProfile}
