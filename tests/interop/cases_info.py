"""nbdinfo: what the handshake tells a client (flags, sizes, block sizes, contexts, names)."""

import errno
import json

import nbd

from runner import case
from servers import Export, memory
from util import MiB, expect_errno, run

DESCRIPTION = "nbdx interop disk"


def nbdinfo_json(*args):
    return json.loads(run(["nbdinfo", "--json", *args], timeout=60).stdout)


def check_block_sizes(exp, where):
    for key in ("block_size_minimum", "block_size_preferred", "block_size_maximum"):
        assert key in exp, f"{where}: no {key}: the server sent no NBD_INFO_BLOCK_SIZE"
    lo, pref, hi = exp["block_size_minimum"], exp["block_size_preferred"], exp["block_size_maximum"]
    # proto.md "Block size constraints".
    assert lo & (lo - 1) == 0 and 1 <= lo <= 64 * 1024, f"{where}: bad minimum {lo}"
    assert pref & (pref - 1) == 0 and pref >= max(lo, 512), f"{where}: bad preferred {pref}"
    assert hi >= pref, f"{where}: maximum {hi} below preferred {pref}"
    assert hi >= 32 * MiB, f"{where}: maximum payload {hi} is below 32 MiB (issue 2)"


@case
def nbdinfo_json_shows_size_flags_block_sizes_and_base_allocation(ctx):
    srv = ctx.server(Export("", memory(64 * MiB)), description=DESCRIPTION)
    info = nbdinfo_json(srv.uri())
    assert info["protocol"] == "newstyle-fixed", info["protocol"]
    assert info["structured"] is True, "structured replies were not negotiated"
    (exp,) = info["exports"]
    assert exp["export-size"] == 64 * MiB, exp["export-size"]
    assert exp["is_read_only"] is False
    want = ["can_flush", "can_fua", "can_trim", "can_zero", "can_multi_conn", "can_cache", "can_df"]
    if "fast-zero" in ctx.profile.features:
        want.append("can_fast_zero")
    missing = [flag for flag in want if exp.get(flag) is not True]
    assert not missing, f"a memory export should advertise {missing}: {exp}"
    assert "base:allocation" in exp.get("contexts", []), f"no base:allocation context: {exp}"
    if ctx.profile.missing("block-size"):
        ctx.note(ctx.profile.missing("block-size"))
    else:
        check_block_sizes(exp, "nbdinfo --json")
    if ctx.profile.missing("description"):
        ctx.note(ctx.profile.missing("description"))
    else:
        assert exp.get("description") == DESCRIPTION, f"description: {exp.get('description')!r}"


@case
def nbdinfo_list_shows_both_named_exports_with_their_sizes(ctx):
    if reason := ctx.profile.missing("multi-export"):
        ctx.skip(reason)
    srv = ctx.server(Export("alpha", memory(16 * MiB)), Export("beta", memory(32 * MiB)))
    info = nbdinfo_json("--list", srv.uri(""))
    sizes = {exp["export-name"]: exp.get("export-size") for exp in info["exports"]}
    assert sizes == {"alpha": 16 * MiB, "beta": 32 * MiB}, f"nbdinfo --list: {sizes}"
    text = run(["nbdinfo", "--list", srv.uri("")], timeout=60).stdout.decode()
    assert "alpha" in text and "beta" in text, text


@case
def opt_list_of_a_single_named_export_shows_that_name(ctx):
    # Not nbdinfo --list: it also asks for the default export "", which this server refuses.
    if reason := ctx.profile.missing("names"):
        ctx.skip(reason)
    srv = ctx.server(Export("only", memory(8 * MiB)), description=DESCRIPTION)
    h = nbd.NBD()
    h.set_opt_mode(True)
    h.connect_unix(srv.socket_path)
    listed = []
    h.opt_list(lambda name, description: listed.append(name) or 0)
    assert listed == ["only"], f"NBD_OPT_LIST: {listed}"
    h.set_export_name("only")
    h.opt_go()
    assert h.get_size() == 8 * MiB
    h.shutdown()


@case
def an_unknown_export_name_is_a_clean_error_and_the_server_goes_on(ctx):
    if reason := ctx.profile.missing("names"):
        ctx.skip(reason)
    srv = ctx.server(Export("known", memory(8 * MiB)))
    for name in ("unknown", ""):
        res = run(["nbdinfo", srv.uri(name)], timeout=60, check=False)
        assert res.returncode != 0, f"nbdinfo of export {name!r} succeeded:\n{res.stdout.decode()}"
        err = res.stderr.decode()
        assert "opt_go" in err or "export" in err, f"nbdinfo of {name!r}: unexpected error: {err}"
    # The same refusal through libnbd: NBD_REP_ERR_UNKNOWN reaches the client as ENOENT.
    h = nbd.NBD()
    h.set_export_name("unknown")
    expect_errno(errno.ENOENT, h.connect_unix, srv.socket_path)
    del h
    assert srv.alive(), "the server died after refusing an export"
    info = nbdinfo_json(srv.uri("known"))
    assert info["exports"][0]["export-size"] == 8 * MiB
