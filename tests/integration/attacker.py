"""What the attack tests use: a library that leaves a mark when root loads it, a user's ~/.pam_environment, a
client that fails its password and stays connected, and a user's own program named sshd.
"""

import glob
import os
import pwd
import shutil
import signal
import subprocess

# The constructor, and la_version (so LD_AUDIT loads it too), write MARKER_PREFIX + "HOW-LIBRARY-PID" (HOW
# is ctor or audit, LIBRARY the file it was loaded as) holding the process's command line, only when the
# process runs as root: the user's own processes load it as well (sshd hands them the same environment),
# and that is allowed.
LIBRARY_SOURCE = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <link.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static void mark(const char *how)
{
    if (geteuid() != 0)
        return;
    Dl_info info;
    const char *lib = "unknown";
    if (dladdr((void *)mark, &info) && info.dli_fname && strrchr(info.dli_fname, '/'))
        lib = strrchr(info.dli_fname, '/') + 1;
    char path[512], cmd[512];
    snprintf(path, sizeof path, "%s%s-%s-%d", MARKER_PREFIX, how, lib, (int)getpid());
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return;
    int c = open("/proc/self/cmdline", O_RDONLY | O_CLOEXEC);
    ssize_t n = c >= 0 ? read(c, cmd, sizeof cmd) : 0;
    for (ssize_t i = 0; i < n; i++)
        if (cmd[i] == '\0')
            cmd[i] = ' ';
    if (n > 0 && write(fd, cmd, (size_t)n) < 0)
        n = 0;
    if (c >= 0)
        close(c);
    close(fd);
}

__attribute__((constructor)) static void irt_atk_loaded(void) { mark("ctor"); }

unsigned int la_version(unsigned int version)
{
    mark("audit");
    return version < LAV_CURRENT ? version : LAV_CURRENT;
}
"""


def build_library(workdir, marker_prefix):
    """Compile the marking library (gcc -shared -fPIC); return its path."""
    source = os.path.join(workdir, "irtatk.c")
    with open(source, "w") as f:
        f.write(LIBRARY_SOURCE)
    out = os.path.join(workdir, "libirtatk.so")
    cmd = ["gcc", "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror",
           f'-DMARKER_PREFIX="{marker_prefix}"', "-o", out, source]  # fmt: skip
    subprocess.run(cmd, check=True)  # noqa: S603 - a fixed compiler command
    return out


def markers(marker_prefix):
    """The marks root processes left, as {"HOW-LIBRARY": the command line of the process}."""
    found = {}
    for path in glob.glob(glob.escape(marker_prefix) + "*"):
        with open(path) as f:
            found[path[len(marker_prefix) :].rsplit("-", 1)[0]] = f.read()
    return found


def remove_markers(marker_prefix):
    for path in glob.glob(glob.escape(marker_prefix) + "*"):
        os.unlink(path)


def home(user):
    return pwd.getpwnam(user).pw_dir


def give(user, path):
    """Make `path` (and everything under it) the user's, as if they had made it themselves."""
    entry = pwd.getpwnam(user)
    paths = [path]
    if os.path.isdir(path) and not os.path.islink(path):
        for root, dirs, files in os.walk(path):
            paths += [os.path.join(root, n) for n in dirs + files]
    for p in paths:
        os.lchown(p, entry.pw_uid, entry.pw_gid)


def user_file(user, relative, text=None, copy_from=None, mode=0o644):
    """Write a file in the user's home, owned by them; return its path. Parent dirs are made, theirs too."""
    path = os.path.join(home(user), relative)
    parent = os.path.dirname(path)
    made = []
    while not os.path.isdir(parent):
        made.append(parent)
        parent = os.path.dirname(parent)
    for d in reversed(made):
        os.mkdir(d, 0o755)
        give(user, d)
    if copy_from is not None:
        shutil.copyfile(copy_from, path)
    else:
        with open(path, "w") as f:
            f.write(text)
    os.chmod(path, mode)
    give(user, path)
    return path


def user_dir(user, relative):
    path = os.path.join(home(user), relative)
    os.makedirs(path, 0o755, exist_ok=True)
    give(user, path)
    return path


def pam_environment(variables):
    """The text of a ~/.pam_environment setting each variable: `NAME DEFAULT="value"` lines, as pam_env reads."""
    for name, value in variables.items():
        if any(c in value for c in '"\\$@\n'):
            raise ValueError(f"{name}: pam_env would expand or cut this value: {value!r}")
    return "".join(f'{name} DEFAULT="{value}"\n' for name, value in variables.items())


def write_pam_environment(user, variables):
    return user_file(user, ".pam_environment", pam_environment(variables))


def owned_by_root(top):
    """Every file or directory under `top` (itself included) that root owns: what a root process left there."""
    found = []
    for root, dirs, files in os.walk(top):
        for p in [root] + [os.path.join(root, n) for n in dirs + files]:
            if os.lstat(p).st_uid == 0:
                found.append(p)
    return sorted(set(found))


# --- strangers -------------------------------------------------------------------------------------------


def no_banner(server):
    """A TCP connection to sshd that reads its banner and never sends one. Return the socket."""
    s = server.connect()
    if not s.recv(256).startswith(b"SSH-2.0-"):
        raise AssertionError("sshd sent no banner")
    return s


def mid_key_exchange(server):
    """A connection that sends a banner, waits for sshd's KEXINIT (its pre-auth child is up), and stops."""
    s = no_banner(server)
    s.sendall(b"SSH-2.0-irt\r\n")
    if not s.recv(65536):
        raise AssertionError("sshd closed the connection instead of starting the key exchange")
    return s


ASKPASS = """#!/bin/sh
# The first prompt gets a wrong password; every later one hangs, so the client stays connected after failing.
if [ -e "{dir}/asked" ]; then touch "{dir}/asked-again"; exec sleep 600; fi
touch "{dir}/asked"
echo not-the-password
"""


class FailedLogin:
    """An ssh client that fails password authentication once and then stays connected, waiting at the next
    prompt (its askpass hangs). In a session of its own, so stop() ends it and its askpass together."""

    def __init__(self, workdir, server, user):
        self.dir = os.path.join(workdir, "failed-login")
        os.mkdir(self.dir)
        askpass = os.path.join(self.dir, "askpass")
        with open(askpass, "w") as f:
            f.write(ASKPASS.format(dir=self.dir))
        os.chmod(askpass, 0o755)
        options = [
            "StrictHostKeyChecking=no",
            "UserKnownHostsFile=/dev/null",
            "PreferredAuthentications=password",
            "PubkeyAuthentication=no",
            "BatchMode=no",
            "NumberOfPasswordPrompts=5",
            "LogLevel=ERROR",
        ]
        argv = [*server.enter, "ssh", "-p", str(server.port), *(a for o in options for a in ("-o", o)),
                f"{user}@127.0.0.1", "true"]  # fmt: skip
        env = {**os.environ, "SSH_ASKPASS": askpass, "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": ":0"}
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,  # noqa: S603
                                     stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip

    def waiting_again(self):
        """True once the client failed a password and is waiting at the next prompt."""
        if self.proc.poll() is not None:
            raise AssertionError(f"the failing client exited: {self.proc.stderr.read()!r}")
        return os.path.exists(os.path.join(self.dir, "asked-again"))

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the client and its askpass: the group we started
        self.proc.wait(10)


# --- impostors -------------------------------------------------------------------------------------------

# Run by a copy of python3 named sshd, as an unprivileged user. argv: mode ("client" of the real sshd, or its
# "own" listener with a connection to itself), dumpable (1 or 0), the real sshd's port.
IMPOSTOR = """
import ctypes, socket, sys
mode, dumpable, port = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3])
if not dumpable:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(4, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE: its /proc entries become root's, as sshd's are
        raise OSError(ctypes.get_errno(), "prctl")
held = []
if mode == "client":
    c = socket.create_connection(("127.0.0.1", port))
    assert c.recv(256).startswith(b"SSH-2.0-")
    held.append(c)
else:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    c = socket.create_connection(listener.getsockname())
    held += [listener, c, listener.accept()[0]]
print("ready", held[-1].getsockname()[1], flush=True)
sys.stdin.read()
"""


class Impostor:
    """A user's own copy of python3 named `sshd`, in their home, holding TCP connections."""

    def __init__(self, user, mode, dumpable, server):
        # A directory of its own: another impostor may be running from the same user's last copy.
        where = f"impostor-{mode}-{int(dumpable)}-{os.getpid()}-{id(self)}"
        binary = user_file(user, f"{where}/sshd", copy_from=os.path.realpath("/usr/bin/python3"), mode=0o755)
        script = user_file(user, f"{where}/impostor.py", IMPOSTOR)
        # setpriv execs (runuser would fork and stay as root): the process is the user's from exec on.
        argv = [*server.enter, "setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", binary,
                "-I", "-S", script, mode, "1" if dumpable else "0", str(server.port)]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,  # noqa: S603
                                     stderr=subprocess.PIPE, text=True)  # fmt: skip
        line = self.proc.stdout.readline().split()
        if not line or line[0] != "ready":
            self.stop()
            raise AssertionError(f"the impostor did not start: {self.proc.stderr.read()}")
        self.port = int(line[1])
        with open(f"/proc/{self.proc.pid}/status") as f:
            self.status = dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
