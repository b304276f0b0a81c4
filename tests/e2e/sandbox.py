"""A real systemd, booted as PID 1 in fresh namespaces on a throwaway overlay of a Debian rootfs.

No VM and no systemd-nspawn (the host has no systemd): a minimal rootfs is made once with
debootstrap and cached, keyed by everything that goes into it; each sandbox then mounts an overlay
on it inside new PID/mount/UTS/IPC/network/cgroup namespaces, mounts the API filesystems and execs
/lib/systemd/systemd with container=other. The cgroup namespace is rooted in a cgroup made for
the sandbox, so its systemd neither sees nor touches the host's cgroups. Teardown kills the
namespace's PID 1 (the kernel then kills every process in it; the mounts die with the mount
namespace) and removes the sandbox's cgroups and files: nothing is left behind.

Tests drive it with ``nsenter … systemctl/journalctl``, as an operator would on a server.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

RELEASES = {"bookworm": "python3.11", "trixie": "python3.13"}
"""The Debian releases the e2e tests boot (systemd 252 and 257), each with its Python."""
MIRROR = os.environ.get("RQWS_E2E_MIRROR", "http://deb.debian.org/debian")
PACKAGES = ("systemd", "systemd-sysv", "dbus", "redis-server", "redis-sentinel", "python3", "libsystemd0", "procps",
            "iproute2", "man-db", "polkitd", "libpam-systemd", "unattended-upgrades",
            "cockpit-ws", "cockpit-bridge", "cockpit-system", "dbus-user-session")
"""cockpit-*: the browser tests of the Cockpit page (tests/e2e/test_cockpit.py) start cockpit-ws themselves;
dbus-user-session: what apt picks for their dconf-service's ``default-dbus-session-bus | dbus-session-bus``,
an alternative debootstrap does not resolve by itself."""
MASKED = ("cockpit.socket",)
"""Units masked in the rootfs: nothing listens on a port in a sandbox unless its test starts it (cockpit-ws's
postinst enables its socket on 9090)."""
CACHE = Path(os.environ.get("RQWS_E2E_CACHE", "/var/cache/rq-worker-service-e2e"))
HIERARCHIES = ("unified", "systemd", "pids", "devices", "memory")
"""cgroup hierarchies systemd writes to; the sandbox gets a cgroup of its own in each."""

SANDBOX_FILES = {
    # The sandbox cannot nest user namespaces, so units that use PrivateUsers= get it switched off.
    "etc/systemd/system/redis-server.service.d/e2e-sandbox.conf": "[Service]\nPrivateUsers=no\n",
    "etc/systemd/system/rq-worker@.service.d/e2e-sandbox.conf": "[Service]\nPrivateUsers=no\n",
    "etc/systemd/system/rq-worker-autoscale.service.d/e2e-sandbox.conf": "[Service]\nPrivateUsers=no\n",
    # debootstrap copies the host's name and leaves /etc/hosts empty; a server has localhost in it.
    "etc/hostname": "rqws-e2e\n",
    "etc/hosts": "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n127.0.1.1 rqws-e2e\n",
}

BOOT_SCRIPT = """\
set -e
mount -t overlay overlay -o "lowerdir=$1,upperdir=$2,workdir=$3" "$4"
r=$4
mount -t proc proc "$r/proc"
mount -t sysfs sysfs "$r/sys"
mount --rbind /dev "$r/dev"
mount -t tmpfs -o mode=755 tmpfs "$r/run"
mount -t tmpfs -o mode=1777 tmpfs "$r/tmp"
hostname "$5"
exec chroot "$r" /usr/bin/env -i container=other /lib/systemd/systemd
"""


def missing_prerequisites() -> str | None:
    """A one-line reason why sandboxes cannot run here, or None."""
    if os.geteuid() != 0:
        return "e2e tests need root (namespaces, mounts, debootstrap)"
    for tool in ("debootstrap", "unshare", "nsenter", "dpkg-buildpackage"):
        if shutil.which(tool) is None:
            return f"e2e tests need {tool} (scripts/test installs it)"
    if not Path("/sys/fs/cgroup").is_dir():
        return "e2e tests need /sys/fs/cgroup"
    return None


def packages(release: str) -> tuple[str, ...]:
    return (*PACKAGES, RELEASES[release])


def rootfs_key(release: str) -> str:
    recipe = "\n".join([release, MIRROR, *packages(release),
                        *(f"{k}={v}" for k, v in sorted(SANDBOX_FILES.items())), *(f"mask {u}" for u in MASKED)])
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def ensure_rootfs(release: str) -> Path:
    """The cached rootfs of ``release``, made with debootstrap (≈1 min) the first time on a machine."""
    root = CACHE / f"rootfs-{release}-{rootfs_key(release)}"
    if (root / ".complete").exists():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="rootfs-", dir=CACHE))
    try:
        subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(packages(release))}", release,
                        str(tmp), MIRROR], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=900)
        for rel, text in SANDBOX_FILES.items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        for unit in MASKED:
            (tmp / "etc/systemd/system" / unit).unlink(missing_ok=True)
            (tmp / "etc/systemd/system" / unit).symlink_to("/dev/null")
        (tmp / ".complete").write_text(rootfs_key(release))
        if root.exists():
            shutil.rmtree(root)
        tmp.rename(root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def _cgroup_paths() -> dict[str, str]:
    """hierarchy mount directory name → this process's cgroup path in it."""
    own: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        own[controllers] = path
    result = {}
    for name in HIERARCHIES:
        mount = Path("/sys/fs/cgroup") / name
        if name == "unified" and not mount.is_dir():
            mount = Path("/sys/fs/cgroup")  # pure cgroup2 host
        if not (mount / "cgroup.procs").exists():
            continue
        key = "" if name == "unified" else ("name=systemd" if name == "systemd" else name)
        if key in own:
            result[str(mount)] = own[key]
    return result


class Sandbox:
    """One booted systemd. Use as a context manager; ``run`` executes a command inside it."""

    def __init__(self, rootfs: Path, hostname: str = "rqws-e2e") -> None:
        self.rootfs = rootfs
        self.hostname = hostname
        self.dir = Path(tempfile.mkdtemp(prefix="rqws-sandbox-"))
        self.cgroups: list[Path] = []
        self.proc: subprocess.Popen | None = None
        self.pid1 = 0

    # -- life cycle ---------------------------------------------------------------------------

    def __enter__(self) -> Sandbox:
        try:
            self.boot()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def boot(self, timeout: float = 90) -> None:
        for sub in ("upper", "work", "merged"):
            (self.dir / sub).mkdir()
        # A host of its own: its name, and a machine id no other sandbox shares.
        etc = self.dir / "upper" / "etc"
        etc.mkdir()
        (etc / "hostname").write_text(f"{self.hostname}\n")
        (etc / "hosts").write_text("127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n"
                                   f"127.0.1.1 {self.hostname}\n")
        (etc / "machine-id").write_text(uuid.uuid4().hex + "\n")
        name = f"rqws-e2e-{os.getpid()}-{self.dir.name}"
        for mount, own in _cgroup_paths().items():
            path = Path(mount) / own.lstrip("/") / name
            path.mkdir()
            self.cgroups.append(path)
        cgroups = list(self.cgroups)

        def enter_cgroups() -> None:
            for path in cgroups:
                (path / "cgroup.procs").write_text(str(os.getpid()))

        boot = self.dir / "boot.sh"
        boot.write_text(BOOT_SCRIPT)
        self.console = open(self.dir / "console.log", "wb")
        self.proc = subprocess.Popen(
            ["unshare", "--pid", "--mount", "--uts", "--ipc", "--net", "--cgroup", "--fork", "--propagation",
             "private", "/bin/sh", str(boot), str(self.rootfs), str(self.dir / "upper"), str(self.dir / "work"),
             str(self.dir / "merged"), self.hostname],
            preexec_fn=enter_cgroups, stdout=self.console, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not self.pid1:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
            if self.proc.poll() is not None:
                raise RuntimeError(f"sandbox did not boot: {self.console_text()}")
            if children.exists() and children.read_text().split():
                self.pid1 = int(children.read_text().split()[0])
            elif time.monotonic() > deadline:
                raise RuntimeError("sandbox did not start")
            time.sleep(0.05)
        while True:
            state = self.run(["systemctl", "is-system-running"], check=False).stdout.strip()
            if state in ("running", "degraded"):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"sandbox systemd did not finish booting (state {state!r})")
            time.sleep(0.2)

    def close(self) -> None:
        if self.pid1:
            try:
                os.kill(self.pid1, 9)
            except ProcessLookupError:
                pass
        if self.proc is not None:
            self.proc.wait(30)
        self.pid1 = 0  # gone: its number may be reused
        for path in self.cgroups:
            _remove_cgroup(path)
        if hasattr(self, "console"):
            self.console.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def console_text(self) -> str:
        return (self.dir / "console.log").read_text(errors="replace")[-2000:]

    def leftover_processes(self) -> list[int]:
        """Pids still in the sandbox's cgroups (none after close)."""
        pids = []
        for path in self.cgroups:
            if path.exists():
                for proc_file in path.rglob("cgroup.procs"):
                    pids += [int(p) for p in proc_file.read_text().split()]
        return pids

    # -- driving it ---------------------------------------------------------------------------

    def run(self, cmd: list[str] | str, check: bool = True, timeout: float = 120,
            input: str | None = None) -> subprocess.CompletedProcess:
        argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else cmd
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "SYSTEMD_PAGER": "", "TERM": "dumb"}
        result = subprocess.run(["nsenter", "-t", str(self.pid1), "-m", "-p", "-u", "-i", "-n", "-C", "-r", "-w",
                                 *argv], capture_output=True, text=True, timeout=timeout, env=env, input=input)
        if check and result.returncode != 0:
            raise AssertionError(f"{argv} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    def path(self, inside: str) -> Path:
        """A path inside the sandbox, as the host sees it."""
        return Path(f"/proc/{self.pid1}/root") / inside.lstrip("/")

    def write(self, inside: str, text: str, mode: int = 0o644) -> None:
        target = self.path(inside)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)

    def copy_in(self, src: Path, inside: str) -> None:
        target = self.path(inside)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, target)

    def freeze(self, frozen: bool = True) -> None:
        """Freeze (or thaw) every process of this host at once, its systemd included: a host that
        hangs as a whole (cgroup v2 freezer on the sandbox's cgroup)."""
        unified = next(p for p in self.cgroups if (p / "cgroup.freeze").exists())
        (unified / "cgroup.freeze").write_text("1" if frozen else "0")
        deadline = time.monotonic() + 10
        while f"frozen {int(frozen)}" not in (unified / "cgroup.events").read_text():
            if time.monotonic() > deadline:
                raise RuntimeError("the sandbox's cgroup did not change its frozen state")
            time.sleep(0.05)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run(["systemctl", "show", unit, *(f"--property={p}" for p in props)]).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def _remove_cgroup(path: Path) -> None:
    if not path.exists():
        return
    for sub in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        _rmdir_retry(sub)
    _rmdir_retry(path)


def _rmdir_retry(path: Path) -> None:
    for _ in range(50):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)  # processes still exiting


def link(a: Sandbox, b: Sandbox, subnet: str = "10.77.0") -> tuple[str, str]:
    """Join two sandboxes' network namespaces with a veth pair; returns (a's address, b's address).
    Traffic stays between the two namespaces: nothing is routed to or from the host."""
    end_a, end_b = f"rqa{a.pid1}", f"rqb{b.pid1}"
    subprocess.run(["ip", "link", "add", end_a, "netns", str(a.pid1), "type", "veth", "peer", "name", end_b,
                    "netns", str(b.pid1)], check=True, capture_output=True)
    for box, end, host in ((a, end_a, 1), (b, end_b, 2)):
        box.run(f"ip addr add {subnet}.{host}/24 dev {end} && ip link set {end} up && ip link set lo up")
    return f"{subnet}.1", f"{subnet}.2"
