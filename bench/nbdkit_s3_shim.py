# bench/nbdkit_s3_shim.py: runs Debian's nbdkit S3 plugin (nbdkit 1.32) unchanged except for
# its block_size callback, for bench/s3.sh.
#
# The plugin advertises (object-size, object-size, object-size) as its block sizes, and nbdkit
# refuses any minimum above 64 KiB ("plugin must set minimum block size between 1 and 64K"),
# so `nbdkit S3 size=… object-size=4M` serves nothing. Here the minimum is 1 (the plugin
# handles any request, with read-modify-write), preferred and maximum the object size.
#
#   nbdkit python bench/nbdkit_s3_shim.py endpoint-url=… bucket=… key=… size=… object-size=…

import importlib.machinery
import importlib.util

_PLUGIN = "/usr/lib/x86_64-linux-gnu/nbdkit/plugins/nbdkit-S3-plugin"
_loader = importlib.machinery.SourceFileLoader("nbdkit_s3_plugin", _PLUGIN)
_spec = importlib.util.spec_from_loader("nbdkit_s3_plugin", _loader)
_s3 = importlib.util.module_from_spec(_spec)
_loader.exec_module(_s3)

globals().update({k: v for k, v in vars(_s3).items() if not k.startswith("__")})


def block_size(server):
    size = _s3.cfg.obj_size or 512 * 1024
    return (1, size, size)
