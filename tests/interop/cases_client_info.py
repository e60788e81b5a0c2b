"""`nbdx info` and `nbdx map` as clients of other servers, checked against nbdinfo.

Every peer (nbdkit, qemu-nbd, nbd-server, nbdx) serves a disk with data and holes,
over a Unix socket and over TCP; `nbdx info --json` must agree with `nbdinfo --json`
on the keys of issue 3, and `nbdx map --json` with `nbdinfo --map --json`.
"""

import json
import random

from peers import NbdServer, nbdx, sparse_image, start, with_data
from runner import case
from servers import Export, file, memory
from util import MiB, run

SIZE = 64 * MiB
TOP_KEYS = ["protocol", "TLS", "structured"]
EXPORT_KEYS = ["export-name", "description", "export-size", "block_size_minimum", "block_size_preferred",
               "block_size_maximum", "is_read_only", "is_rotational", "can_flush", "can_fua", "can_trim",
               "can_zero", "can_fast_zero", "can_multi_conn", "can_cache", "can_df", "contexts"]


def pieces(seed):
    rng = random.Random(seed)
    return [(MiB, rng.randbytes(70000)), (10 * MiB + 4096, rng.randbytes(4096)),
            (33 * MiB, rng.randbytes(3 * MiB)), (SIZE - 65536, rng.randbytes(65536))]


def each_peer(ctx, transport):
    """Yields (name, uri) for every peer serving a 64 MiB disk named "disk" with data and holes."""
    data = pieces(7)
    for kind in ("nbdkit", "nbdx"):
        srv = with_data(start(ctx, kind, [Export("disk", memory(SIZE))], transport), data)
        yield kind, srv.uri()
    image = sparse_image(ctx.path(f"qemu-{transport}.img"), SIZE, data)
    yield "qemu-nbd", start(ctx, "qemu-nbd", [Export("disk", file(image))], transport).uri()
    image = sparse_image(ctx.path(f"nbds-{transport}.img"), SIZE, data)
    peer = NbdServer(ctx, "disk", image, transport)
    try:
        yield "nbd-server", peer.uri()
    finally:
        peer.stop()


def compare_info(ours, theirs, where):
    for key in TOP_KEYS:
        assert ours.get(key) == theirs.get(key), f"{where}: {key}: nbdx {ours.get(key)!r}, nbdinfo {theirs.get(key)!r}"
    assert len(ours["exports"]) == len(theirs["exports"]), f"{where}: number of exports differs"
    for a, b in zip(ours["exports"], theirs["exports"]):
        for key in EXPORT_KEYS:
            va, vb = a.get(key), b.get(key)
            if key == "contexts":
                va, vb = sorted(va or []), sorted(vb or [])
            assert (key in a) == (key in b) or key == "contexts", \
                f"{where}: export {b.get('export-name')!r}: {key} is {'only in nbdx' if key in a else 'missing'}"
            assert va == vb, f"{where}: export {b.get('export-name')!r}: {key}: nbdx {va!r}, nbdinfo {vb!r}"


@case(timeout=240)
def nbdx_info_json_matches_nbdinfo_against_every_peer_over_unix_and_tcp(ctx):
    checked = []
    for transport in ("unix", "tcp"):
        for name, uri in each_peer(ctx, transport):
            theirs = json.loads(run(["nbdinfo", "--json", uri], timeout=60).stdout)
            ours = json.loads(nbdx(ctx, "info", "--json", uri).stdout)
            compare_info(ours, theirs, f"{name} over {transport}")
            text = nbdx(ctx, "info", uri).stdout.decode()
            assert text.startswith("protocol: newstyle"), f"{name}: text output starts {text[:60]!r}"
            assert f'export="disk":' in text and "\tcan_zero: " in text, f"{name}: text output:\n{text}"
            checked.append(f"{name}/{transport}")
    ctx.note("compared with nbdinfo: " + ", ".join(checked))


@case(timeout=240)
def nbdx_map_json_matches_nbdinfo_map_against_every_peer(ctx):
    checked = []
    for transport in ("unix", "tcp"):
        for name, uri in each_peer(ctx, transport):
            ours = json.loads(nbdx(ctx, "map", "--json", uri).stdout)
            res = run(["nbdinfo", "--map", "--json", uri], timeout=60, check=False)
            assert sum(e["length"] for e in ours) == SIZE, f"{name}: the map does not cover the export: {ours}"
            if res.returncode != 0:
                # nbd-server 3.24 has no block status: nbdinfo gives up, nbdx reports all data.
                assert b"base:allocation" in res.stderr, res.stderr
                assert [(e["type"], e["description"]) for e in ours] == [(0, "data")], ours
                checked.append(f"{name}/{transport} (no block status)")
                continue
            theirs = json.loads(res.stdout)
            assert ours == theirs, f"{name} over {transport}: nbdx map {ours}\nnbdinfo --map {theirs}"
            assert any(e["type"] == 0 for e in ours) and any(e["type"] & 1 for e in ours), \
                f"{name}: the map shows no data or no hole: {ours}"
            text = nbdx(ctx, "map", uri).stdout.decode()
            assert text == run(["nbdinfo", "--map", uri], timeout=60).stdout.decode(), \
                f"{name}: text maps differ:\n{text}"
            checked.append(f"{name}/{transport}")
    ctx.note("compared with nbdinfo --map: " + ", ".join(checked))


@case
def nbdx_info_list_shows_every_named_export_like_nbdinfo(ctx):
    names = ["alpha", "beta", "gamma"]
    for transport in ("unix", "tcp"):
        srv = start(ctx, "nbdkit", [Export(n, memory(4 * MiB)) for n in names], transport,
                    description="several exports")
        uri = srv.uri("beta")
        theirs = json.loads(run(["nbdinfo", "--list", "--json", uri], timeout=60).stdout)
        ours = json.loads(nbdx(ctx, "info", "--list", "--json", uri).stdout)
        assert [e["export-name"] for e in ours["exports"]] == names, ours
        compare_info(ours, theirs, f"nbdkit --list over {transport}")
        text = nbdx(ctx, "info", "--list", uri).stdout.decode()
        assert all(f'export="{n}":' in text for n in names), text
    nbdx_srv = start(ctx, "nbdx", [Export(n, memory(4 * MiB)) for n in names])
    ours = json.loads(nbdx(ctx, "info", "-L", "--json", nbdx_srv.uri()).stdout)
    compare_info(ours, json.loads(run(["nbdinfo", "-L", "--json", nbdx_srv.uri()], timeout=60).stdout), "nbdx -L")


@case
def predicates_exit_0_when_true_2_when_false_and_1_on_errors(ctx):
    rw = start(ctx, "nbdkit", [Export("", memory(SIZE))])
    ro = start(ctx, "nbdkit", [Export("", memory(SIZE))], read_only=True)
    assert nbdx(ctx, "info", "--size", rw.uri()).stdout.decode().strip() == str(SIZE)
    cases = [
        (["--is", "read-only", ro.uri()], 0), (["--is-read-only", ro.uri()], 0),
        (["--is", "read-only", rw.uri()], 2), (["--can", "write", rw.uri()], 0),
        (["--can", "write", ro.uri()], 2), (["--can", "trim", rw.uri()], 0),
        (["--can", "zero", rw.uri()], 0), (["--can", "multi-conn", rw.uri()], 0),
        (["--can", "extents", rw.uri()], 0), (["--can", "structured-reply", rw.uri()], 0),
        (["--is", "tls", rw.uri()], 2), (["--is", "rotational", rw.uri()], 2),
        (["--can", "connect", rw.uri()], 0),
        (["--can", "connect", f"nbd+unix:///?socket={ctx.path('none.sock')}"], 2),
        (["--can", "flush", f"nbd+unix:///?socket={ctx.path('none.sock')}"], 1),
        (["--can", "bogus", rw.uri()], 1), (["--is", "bogus", rw.uri()], 1),
    ]
    for args, want in cases:
        res = nbdx(ctx, "info", *args, check=False)
        assert res.returncode == want, f"nbdx info {args}: exit status {res.returncode} (want {want})"
        assert not res.stdout, f"nbdx info {args} printed {res.stdout!r}"
        if want == 1:
            assert len(res.stderr.decode().strip().splitlines()) == 1, res.stderr
    for feature in ("flush", "fua", "trim", "zero", "fast-zero", "cache", "df", "multi-conn"):
        want = run(["nbdinfo", "--can", feature, rw.uri()], timeout=60, check=False).returncode
        got = nbdx(ctx, "info", "--can", feature, rw.uri(), check=False).returncode
        assert got == want, f"--can {feature}: nbdx {got}, nbdinfo {want}"


@case
def bad_uris_refused_connections_and_unknown_exports_are_one_line_errors(ctx):
    srv = start(ctx, "nbdkit", [Export("disk", memory(SIZE))])
    image = ctx.path("dst.img")
    missing = f"nbd+unix:///nope?socket={srv.socket_path}"
    refused = f"nbd+unix:///?socket={ctx.path('none.sock')}"
    runs = [
        (["info", "nbd://host:notaport/"], "invalid NBD URI"), (["map", "http://x/"], "unknown scheme"),
        (["info", refused], "cannot connect"), (["map", refused], "cannot connect"),
        (["info", missing], "not found"), (["map", missing], "not found"),
        (["copy", missing, image], "not found"), (["copy", refused, image], "cannot connect"),
        (["copy", srv.uri(), refused], "cannot connect"), (["copy", "nbd://[::1/", image], "invalid NBD URI"),
        (["copy", "null:", image], "only be the destination"),
    ]
    for args, want in runs:
        res = nbdx(ctx, *args, check=False)
        err = res.stderr.decode()
        assert res.returncode != 0, f"nbdx {args} succeeded"
        assert len(err.strip().splitlines()) == 1 and want in err, f"nbdx {args}: stderr {err!r} (want {want!r})"
        assert "panicked" not in err and "RUST_BACKTRACE" not in err, err
