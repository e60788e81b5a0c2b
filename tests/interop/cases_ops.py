"""Operations: captive mode (--run, -U -), -s on stdin/stdout, socket activation,
--exit-with-parent, logs, completions and manual pages.

These exercise the nbdx command line (issue 8) and skip for other profiles.
"""

import os
import re
import shutil
import signal
import socket
import subprocess

import nbd

from cases_cli import URI_RE, nbdx_cli, printed_uri
from runner import case
from util import MiB, run, wait_for

# Shell text for --run that prints where the private socket was, for the checks after.
SHOW_SOCKET = 'echo "socket=$unixsocket"'


def socket_dir_of(output):
    m = re.search(r"^socket=(/\S+)$", output, re.M)
    assert m, f"the command did not print its $unixsocket:\n{output}"
    return os.path.dirname(m.group(1))


@case
def captive_nbdinfo_exits_0_and_the_private_socket_directory_is_gone(ctx):
    nbdx = nbdx_cli(ctx)
    res = run([nbdx, "serve", "-U", "-", "--run", f'nbdinfo "$uri" && {SHOW_SOCKET}', "memory:64M"], timeout=60)
    out = res.stdout.decode()
    assert "export-size: 67108864" in out, out
    private = socket_dir_of(out)
    assert not os.path.exists(private), f"{private} is still there after nbdx exited"
    uri_lines = [line for line in out.splitlines() if line.startswith("nbd+unix://")]
    assert not uri_lines, f"nbdx printed its URI without --print-uri in captive mode: {uri_lines}"


@case
def captive_mode_exits_with_the_commands_status_and_cleans_up_on_failure(ctx):
    nbdx = nbdx_cli(ctx)
    assert run([nbdx, "serve", "--run", "false", "-U", "-", "memory:1M"], check=False).returncode == 1
    res = run([nbdx, "serve", "-U", "-", "--run", f"{SHOW_SOCKET}; exit 7", "memory:1M"], check=False)
    assert res.returncode == 7, f"exit status {res.returncode} (want 7)"
    private = socket_dir_of(res.stdout.decode())
    assert not os.path.exists(private), f"{private} is still there after the command failed"
    res = run([nbdx, "serve", "-U", "-", "--run", "kill -KILL $$", "memory:1M"], check=False)
    assert res.returncode == 128 + signal.SIGKILL, f"command killed by SIGKILL: exit status {res.returncode}"


@case
def captive_mode_over_tcp_sets_port_and_an_empty_unixsocket(ctx):
    nbdx = nbdx_cli(ctx)
    check = ('test -n "$port" && test -z "$unixsocket" && test "$nbd" = "$uri" && '
             'test "$uri" = "nbd://127.0.0.1:$port/" && nbdinfo --size "$uri"')
    res = run([nbdx, "serve", "-i", "127.0.0.1", "-p", "0", "--run", check, "memory:3M"], timeout=60)
    assert res.stdout.decode().strip() == str(3 * MiB), res.stdout


@case
def print_uri_puts_the_uri_before_the_captive_commands_output(ctx):
    nbdx = nbdx_cli(ctx)
    res = run([nbdx, "serve", "-U", "-", "--print-uri", "--run", 'echo "$uri"', "memory:1M"], timeout=60)
    lines = res.stdout.decode().splitlines()
    assert len(lines) == 2 and lines[0] == lines[1] and lines[0].startswith("nbd+unix:///?socket="), lines


@case
def single_mode_serves_one_session_over_a_socketpair_and_over_pipes(ctx):
    nbdx = nbdx_cli(ctx)
    ours, theirs = socket.socketpair()
    proc = subprocess.Popen([nbdx, "-vv", "serve", "-s", "memory:8M"], stdin=theirs, stdout=theirs,
                            stderr=open(ctx.path("single.log"), "wb"))
    theirs.close()
    try:
        h = nbd.NBD()
        h.connect_socket(ours.detach())  # libnbd closes it
        assert h.get_size() == 8 * MiB
        h.pwrite(b"\xa5" * 65536, MiB)
        assert h.pread(65536, MiB) == b"\xa5" * 65536
        h.shutdown()
        assert proc.wait(timeout=30) == 0, f"nbdx serve -s exited with {proc.returncode}"
    finally:
        if proc.poll() is None:
            proc.kill()
    log = open(ctx.path("single.log")).read()
    assert "NBD_CMD_WRITE" in log and "conn{peer=stdio}" in log, f"no per-request debug lines:\n{log[-2000:]}"
    # libnbd's connect_command starts nbdx with one end of a socketpair as stdin and stdout.
    h = nbd.NBD()
    h.connect_command([nbdx, "serve", "-s", "memory:2M"])
    h.pwrite(b"pipe", 0)
    assert h.pread(4, 0) == b"pipe" and h.get_size() == 2 * MiB
    h.shutdown()


@case
def single_mode_works_on_separate_stdin_and_stdout_pipes(ctx):
    nbdx = nbdx_cli(ctx)
    # A relay joins one end of a socketpair to nbdx's two pipes, as sshd does with a session.
    ours, theirs = socket.socketpair()
    relay = ("import os, socket, sys, threading\n"
             "s = int(sys.argv[1]); r, w = int(sys.argv[2]), int(sys.argv[3])\n"
             "def pump(src, dst):\n"
             "    while (data := os.read(src, 1 << 16)):\n"
             "        os.write(dst, data)\n"
             "def replies():\n"
             "    pump(r, s)\n"
             "    socket.socket(fileno=os.dup(s)).shutdown(socket.SHUT_WR)\n"
             "t = threading.Thread(target=replies); t.start()\n"
             "pump(s, w); os.close(w); t.join()\n")
    proc = subprocess.Popen([nbdx, "serve", "-s", "memory:4M"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    pump = subprocess.Popen(["/usr/bin/python3", "-c", relay, str(theirs.fileno()), str(proc.stdout.fileno()),
                             str(proc.stdin.fileno())], pass_fds=(theirs.fileno(), proc.stdout.fileno(),
                                                                  proc.stdin.fileno()))
    theirs.close()
    proc.stdin.close()
    proc.stdout.close()
    try:
        h = nbd.NBD()
        h.connect_socket(ours.detach())  # libnbd closes it
        h.pwrite(b"\x5a" * 4096, 8192)
        assert h.pread(4096, 8192) == b"\x5a" * 4096
        h.shutdown()
        assert proc.wait(timeout=30) == 0, f"nbdx serve -s on pipes exited with {proc.returncode}"
    finally:
        for p in (proc, pump):
            if p.poll() is None:
                p.kill()
        pump.wait(timeout=30)


def activated(nbdx, fd, *args):
    """nbdx started as socket activation does: the socket on fd 3, LISTEN_FDS=1, LISTEN_PID=its pid."""
    move = "" if fd == 3 else f" 3<&{fd} {fd}<&-"
    script = f'LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=nbd exec "$@"{move}'
    return ["/bin/bash", "-c", script, "bash", nbdx, *args]


@case
def socket_activation_serves_on_passed_tcp_and_unix_listening_sockets(ctx):
    nbdx = nbdx_cli(ctx)
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(16)
    path = ctx.path("act.sock")
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(path)
    unix.listen(16)
    for sock, transport in ((tcp, "tcp"), (unix, "unix")):
        port = sock.getsockname()[1] if transport == "tcp" else 0
        with sock:
            for extra in ([], ["--print-uri"]):
                srv = ctx.server(transport=transport, port=port, socket_path=path, pass_fds=(sock.fileno(),),
                                 command=lambda s, e=extra: activated(nbdx, sock.fileno(), "serve", *e, "memory:5M"))
                for _ in range(2):
                    h = srv.connect()
                    assert h.get_size() == 5 * MiB
                    h.shutdown()
                if extra:
                    uri = printed_uri(srv)
                    assert (f":{port}/" if transport == "tcp" else f"socket={path}") in uri, f"printed {uri!r}"
                else:
                    output = srv.log_text().split("\n", 1)[-1]
                    assert not URI_RE.search(output), f"URI printed without --print-uri: {output!r}"
                assert not srv.stop(), srv.log_tail()
    assert os.path.exists(path), "nbdx removed a socket that belongs to the service manager"


@case
def socket_activation_refuses_listening_options_and_ignores_another_processs_variables(ctx):
    nbdx = nbdx_cli(ctx)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    with sock:
        res = subprocess.run(activated(nbdx, sock.fileno(), "serve", "-p", "10809", "memory:1M"),
                             capture_output=True, timeout=30, pass_fds=(sock.fileno(),))
    assert res.returncode == 2, f"-p with socket activation: exit status {res.returncode} (want 2)"
    assert b"socket activation" in res.stderr, res.stderr
    env = dict(os.environ, LISTEN_PID="1", LISTEN_FDS="1")
    out = run([nbdx, "serve", "-U", "-", "--run", 'nbdinfo --size "$uri"', "memory:1M"], env=env).stdout
    assert out.decode().strip() == str(MiB), "variables meant for pid 1 were not ignored"


@case
def systemd_socket_activate_in_inetd_mode_serves_each_client_with_its_own_process(ctx):
    nbdx = nbdx_cli(ctx)
    if not shutil.which("systemd-socket-activate"):
        ctx.skip("systemd-socket-activate is not installed")
    path = ctx.path("inetd.sock")
    log = open(ctx.path("activate.log"), "wb")
    proc = subprocess.Popen(["systemd-socket-activate", "-l", path, "-a", "--inetd", nbdx, "serve", "-s",
                             "memory:1M"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: os.path.exists(path) or proc.poll() is not None, 20, "the activation socket")
        first = nbd.NBD()
        first.connect_unix(path)
        first.pwrite(b"first", 0)
        second = nbd.NBD()
        second.connect_unix(path)
        assert second.pread(5, 0) == bytes(5), "two clients share one process"
        for h in (first, second):
            h.shutdown()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@case
def exit_with_parent_stops_the_server_when_its_parent_dies(ctx):
    nbdx = nbdx_cli(ctx)
    sock, pidfile = ctx.path("ewp.sock"), ctx.path("ewp.pid")
    # The parent starts nbdx, then waits for its stdin to close and exits without waiting for it.
    parent_code = ("import subprocess, sys\n"
                   "subprocess.Popen(sys.argv[1:])\n"
                   "sys.stdin.read()\n")
    parent = subprocess.Popen(["/usr/bin/python3", "-c", parent_code, nbdx, "serve", "--exit-with-parent",
                               "-U", sock, "--pidfile", pidfile, "memory:1M"], stdin=subprocess.PIPE,
                              stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: os.path.exists(pidfile) and open(pidfile).read().strip(), 20, "the pidfile")
        pid = int(open(pidfile).read())
        h = nbd.NBD()
        h.connect_unix(sock)
        h.shutdown()
        parent.stdin.close()
        assert parent.wait(timeout=30) == 0
        # An orderly shutdown removes the socket and the pidfile; then the process is gone.
        wait_for(lambda: not os.path.exists(sock) and not os.path.exists(pidfile), 20,
                 "nbdx to remove its socket and pidfile after its parent died")
        wait_for(lambda: not process_running(pid), 20, "nbdx to exit")
    finally:
        if parent.poll() is None:
            parent.kill()


def process_running(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


@case
def verbose_logs_show_connections_negotiated_options_and_requests_on_stderr_only(ctx):
    nbdx = nbdx_cli(ctx)
    srv = ctx.server(command=lambda s: [nbdx, "-vv", "serve", "-U", s.socket_path, "memory:1M"])
    h = srv.connect()
    h.pread(512, 4096)
    h.shutdown()
    wait_for(lambda: "disconnected" in srv.log_text(), 20, "the disconnection in the log")
    log = srv.log_text()
    for needle in ("conn{id=", "connected", "export opened", "replies=Structured",
                   "meta_contexts=[\"base:allocation\"]", "cmd=NBD_CMD_READ", "offset=4096 length=512"):
        assert needle in log, f"{needle!r} not in the log:\n{log[-3000:]}"
    res = run([nbdx, "-vv", "serve", "-U", "-", "--run", "true", "memory:1M"])
    assert res.stdout == b"", f"logs went to stdout: {res.stdout[:200]!r}"


@case
def completions_and_manual_pages_are_generated_from_the_command_line(ctx):
    nbdx = nbdx_cli(ctx)
    bash = run([nbdx, "completions", "bash"]).stdout.decode()
    assert "_nbdx()" in bash and "--exit-with-parent" in bash, bash[:300]
    assert run([nbdx, "completions", "zsh"]).stdout.startswith(b"#compdef nbdx")
    assert b"complete -c nbdx" in run([nbdx, "completions", "fish"]).stdout
    page = run([nbdx, "manpage"]).stdout.decode()
    assert ".TH nbdx 1" in page and "nbdx\\-serve(1)" in page, page[:500]
    serve = run([nbdx, "manpage", "serve"]).stdout.decode()
    assert ".TH nbdx-serve 1" in serve and "\\-\\-run" in serve and "socket activation" in serve.lower()
    out = ctx.path("man")
    os.makedirs(out)
    run([nbdx, "manpage", "--out-dir", out])
    assert {"nbdx.1", "nbdx-serve.1", "nbdx-completions.1"} <= set(os.listdir(out)), os.listdir(out)
    assert run([nbdx, "completions", "tcsh"], check=False).returncode == 2
