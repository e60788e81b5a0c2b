"""TLS (issue 5): the server under test with `require`, `on`, verify-peer and pre-shared
keys against libnbd (nbdinfo, nbdsh, nbdcopy, python3-libnbd) and qemu
(tls-creds-x509), and the nbdx client (`nbdx info`, `nbdx copy`, when built) against
nbdkit with TLS.

Certificates are made at run time (tlspki.py). Servers listen on Unix sockets, so
clients verify the name `localhost` (qemu needs tls-hostname=localhost for that).
"""

import hashlib
import os
from dataclasses import dataclass

import nbd

from runner import case
from servers import Export, memory
from tlspki import pki
from util import ROOT, MiB, make_image, run, sha256_file

SIZE = 64 * MiB


@dataclass(frozen=True)
class Tls:
    """How a server runs TLS: `mode` on|require, its credentials (a certificate directory or
    a psktool keys file), policy."""

    mode: str
    dir: str
    verify_peer: bool = False
    tls_only: tuple = ()
    psk: str = None


def tls_server(ctx, mode, *exports, verify_peer=False, tls_only=(), rogue=False):
    """Starts the server under test with TLS, or skips when its profile cannot."""
    for feature, needed in (("tls", True), ("tls-on", mode == "on"), ("tls-only", bool(tls_only))):
        if needed and (reason := ctx.profile.missing(feature)):
            ctx.skip(reason)
    tls = Tls(mode, pki().server_dir(rogue=rogue), verify_peer, tuple(tls_only))
    return ctx.server(*(exports or [Export("disk", memory(SIZE))]), tls=tls)


def nbds(srv, name="disk", certs=None):
    """The nbds+unix URI of export `name`, trusting the test CA (client credentials: `certs`)."""
    certs = certs or pki().client_dir()
    return f"nbds+unix:///{name}?socket={srv.socket_path}&tls-certificates={certs}"


def plain(srv, name="disk"):
    return f"nbd+unix:///{name}?socket={srv.socket_path}"


def tls_handle(srv, name="disk", certs=None):
    """A libnbd handle connected with TLS required."""
    h = nbd.NBD()
    h.set_tls(nbd.TLS_REQUIRE)
    h.set_tls_certificates(certs or pki().client_dir())
    h.set_export_name(name)
    h.connect_unix(srv.socket_path)
    return h


def fails(argv, what):
    res = run(argv, timeout=60, check=False)
    assert res.returncode != 0, f"{what} succeeded:\n{res.stdout.decode(errors='replace')}"
    return (res.stdout + res.stderr).decode(errors="replace")


def write_read(h, offset=3 * MiB, seed=5):
    data = os.urandom(MiB) if seed is None else bytes((i * seed) % 251 for i in range(MiB))
    h.pwrite(data, offset)
    h.flush()
    assert h.pread(len(data), offset) == data, "read back differs"
    return data


def qemu_creds(certs):
    return ["--object", f"tls-creds-x509,id=tls0,dir={certs},endpoint=client"]


def qemu_opts(srv, name="disk"):
    return (f"driver=nbd,server.type=unix,server.path={srv.socket_path},export={name},"
            "tls-creds=tls0,tls-hostname=localhost")


@case
def with_tls_required_libnbd_nbdsh_and_nbdcopy_read_and_write_correct_data(ctx):
    srv = tls_server(ctx, "require")
    info = run(["nbdinfo", "--json", nbds(srv)], timeout=60).stdout.decode()
    assert '"TLS": true' in info, f"nbdinfo does not report TLS: {info}"
    assert f'"export-size": {SIZE}' in info, info
    h = tls_handle(srv)
    assert h.get_tls_negotiated(), "libnbd did not negotiate TLS"
    data = write_read(h)
    h.shutdown()
    # nbdsh -u refuses tls-certificates= (local file access): connect in the script.
    script = (f"import hashlib\nh.set_uri_allow_local_file(True)\nh.connect_uri('{nbds(srv)}')\n"
              "assert h.get_tls_negotiated()\n"
              f"assert hashlib.sha256(h.pread({MiB}, {3 * MiB})).hexdigest() == '{hashlib.sha256(data).hexdigest()}'\n"
              f"h.pwrite(b'nbdsh' * 100, {40 * MiB})\nh.flush()")
    env = dict(os.environ, PATH="/usr/bin:" + os.environ.get("PATH", ""))
    run(["nbdsh", "-c", script], timeout=60, env=env)
    h = tls_handle(srv)
    assert h.pread(500, 40 * MiB) == b"nbdsh" * 100, "nbdsh's write over TLS is not visible"
    h.shutdown()
    image, back = ctx.path("image.raw"), ctx.path("back.raw")
    make_image(image, SIZE, seed=7)
    run(["nbdcopy", image, nbds(srv)], timeout=120)
    run(["nbdcopy", nbds(srv), back], timeout=120)
    assert sha256_file(image) == sha256_file(back), "nbdcopy over TLS did not round-trip"


@case
def with_tls_required_a_plaintext_client_is_refused_and_learns_no_export(ctx):
    srv = tls_server(ctx, "require", Export("secret-disk", memory(SIZE)))
    fails(["nbdinfo", plain(srv, "secret-disk")], "plaintext nbdinfo")
    out = fails(["nbdinfo", "--list", plain(srv, "")], "plaintext nbdinfo --list")
    assert "secret-disk" not in out, f"the export list leaked in plaintext: {out}"
    h = nbd.NBD()
    h.set_tls(nbd.TLS_DISABLE)
    h.set_opt_mode(True)
    h.connect_unix(srv.socket_path)
    seen = []
    for attempt in (lambda: h.opt_list(lambda name, desc: seen.append(name)),
                    lambda: (h.set_export_name("secret-disk"), h.opt_info())):
        try:
            attempt()
        except nbd.Error:
            pass
        else:
            raise AssertionError("an option succeeded in plaintext")
    assert not seen, f"NBD_OPT_LIST disclosed {seen} in plaintext"
    h.opt_abort()


@case
def qemu_img_and_qemu_io_use_the_export_with_tls_creds_x509(ctx):
    srv = tls_server(ctx, "require")
    creds = qemu_creds(pki().client_dir())
    out = run(["qemu-io", *creds, "--image-opts", qemu_opts(srv),
               "-c", "write -P 0x5a 0 1M", "-c", "read -P 0x5a 0 1M"], timeout=120)
    text = (out.stdout + out.stderr).decode(errors="replace")
    assert "Pattern verification failed" not in text and "read 1048576/1048576" in text, text
    info = run(["qemu-img", "info", *creds, "--image-opts", qemu_opts(srv)], timeout=60).stdout.decode()
    assert f"({SIZE} bytes)" in info, info
    image, back = ctx.path("image.raw"), ctx.path("back.raw")
    make_image(image, SIZE, seed=9)
    run(["qemu-img", "convert", "-n", *creds, "-f", "raw", image, "--target-image-opts", qemu_opts(srv)],
        timeout=120)
    run(["nbdcopy", nbds(srv), back], timeout=120)
    assert sha256_file(image) == sha256_file(back), "qemu-img convert over TLS wrote other data"


@case
def with_tls_on_plaintext_and_tls_clients_both_work_and_tls_only_exports_need_tls(ctx):
    only = () if ctx.profile.missing("tls-only") else ("secret",)
    if not only:
        ctx.note(f"{ctx.profile.missing('tls-only')}: no TLS-only export")
    exports = [Export("open", memory(SIZE))] + [Export(name, memory(SIZE)) for name in only]
    srv = tls_server(ctx, "on", *exports, tls_only=only)
    h = srv.connect("open")
    assert not h.get_tls_negotiated()
    write_read(h)
    h.shutdown()
    h = tls_handle(srv, "open")
    assert h.get_tls_negotiated()
    write_read(h, seed=3)
    h.shutdown()
    if not only:
        return
    h = tls_handle(srv, "secret")
    write_read(h)
    h.shutdown()
    fails(["nbdinfo", plain(srv, "secret")], "plaintext NBD_OPT_GO of a TLS-only export")
    listed = run(["nbdinfo", "--list", "--json", plain(srv, "")], timeout=60).stdout.decode()
    assert '"open"' in listed and '"secret"' not in listed, f"plaintext list: {listed}"


@case
def verify_peer_refuses_no_certificate_and_a_foreign_one_and_accepts_one_from_the_ca(ctx):
    srv = tls_server(ctx, "require", verify_peer=True)
    for who in (None, "rogue"):
        fails(["nbdinfo", nbds(srv, certs=pki().client_dir(who))], f"a client with certificate {who}")
    h = tls_handle(srv, certs=pki().client_dir("ca"))
    write_read(h)
    h.shutdown()
    out = run(["qemu-io", *qemu_creds(pki().client_dir("ca")), "--image-opts", qemu_opts(srv),
               "-c", "read -P 0x00 8M 1M"], timeout=60)
    assert b"read 1048576/1048576" in out.stdout, out.stdout


@case
def with_pre_shared_keys_from_psktool_libnbd_reads_and_writes_and_a_wrong_key_is_refused(ctx):
    if reason := ctx.profile.missing("tls-psk"):
        ctx.skip(reason)
    keys, wrong = ctx.path("keys.psk"), ctx.path("wrong.psk")
    run(["psktool", "-u", "alice", "-p", keys], timeout=30)
    run(["psktool", "-u", "alice", "-p", wrong], timeout=30)
    srv = ctx.server(Export("disk", memory(SIZE)), tls=Tls("require", "", psk=keys))
    size = run(["nbdinfo", "--size", f"nbds+unix://alice@/disk?socket={srv.socket_path}&tls-psk-file={keys}"],
               timeout=60).stdout.decode().strip()
    assert size == str(SIZE), size
    h = nbd.NBD()
    h.set_tls(nbd.TLS_REQUIRE)
    h.set_tls_psk_file(keys)
    h.set_tls_username("alice")
    h.set_export_name("disk")
    h.connect_unix(srv.socket_path)
    write_read(h)
    h.shutdown()
    fails(["nbdinfo", f"nbds+unix://alice@/disk?socket={srv.socket_path}&tls-psk-file={wrong}"], "a wrong key")


def nbdx_client(ctx, subcommand):
    """The nbdx binary if it has `subcommand` (the client tools may not be built yet), else skip."""
    binary = os.environ.get("NBDX_BIN") or os.path.join(ROOT, "target/release/nbdx")
    if not os.access(binary, os.X_OK) or run([binary, subcommand, "--help"], timeout=30, check=False).returncode:
        ctx.skip(f"{binary} has no '{subcommand}' command (the TLS client is covered by crates/nbdx/tests/tls)")
    return binary


def nbdkit_tls(ctx, mode, rogue=False):
    """nbdkit serving 64 MiB of RAM with TLS `mode` (require, off), whatever the profile."""
    certs = pki().server_dir(rogue=rogue)

    def argv(srv):
        return ["nbdkit", "-f", "--exit-with-parent", "-U", srv.socket_path, f"--tls={mode}",
                f"--tls-certificates={certs}", "memory", str(SIZE)]
    return ctx.server(Export("", memory(SIZE)), command=argv)


@case
def nbdx_info_and_nbdx_copy_work_over_nbds_with_nbdkit_requiring_tls(ctx):
    nbdx = nbdx_client(ctx, "info")
    srv = nbdkit_tls(ctx, "require")
    size = run([nbdx, "info", "--size", nbds(srv, "")], timeout=60).stdout.decode().strip()
    assert size == str(SIZE), f"nbdx info --size over TLS: {size!r}"
    if run([nbdx, "copy", "--help"], timeout=30, check=False).returncode:
        ctx.note("no 'nbdx copy' in this build: only nbdx info was checked")
        return
    image, back = ctx.path("image.raw"), ctx.path("back.raw")
    make_image(image, SIZE, seed=11)
    run([nbdx, "copy", image, nbds(srv, "")], timeout=120)
    run([nbdx, "copy", nbds(srv, ""), back], timeout=120)
    assert sha256_file(image) == sha256_file(back), "nbdx copy over TLS did not round-trip"


@case
def the_nbdx_client_refuses_an_untrusted_certificate_and_a_server_without_tls(ctx):
    nbdx = nbdx_client(ctx, "info")
    rogue = nbdkit_tls(ctx, "require", rogue=True)
    out = fails([nbdx, "info", nbds(rogue, "")], "nbdx info against an untrusted certificate")
    assert "UnknownIssuer" in out, out
    plain_srv = nbdkit_tls(ctx, "off")
    out = fails([nbdx, "info", nbds(plain_srv, "")], "nbdx info nbds:// against a plaintext server")
    assert "does not offer TLS" in out, out
