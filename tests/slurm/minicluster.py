"""A real one-node SLURM cluster on this machine, for tests and for trying the slurm profile.

Daemons (all as the current user, root in CI; state, sockets and logs under one folder):
``munged`` (own key and socket), MariaDB (``mariadbd`` on a free localhost port, for
accounting), ``slurmdbd`` (so ``sacct``/``sacctmgr`` work, as the executor plugin expects),
``slurmctld`` and ``slurmd``. Every port is picked free, so two clusters can run side by side.

The node advertises the resources our slurm profile asks for (``cpus``, ``mem_mb``, ``gpus``
GPUs of type ``gpu_type``) with ``SlurmdParameters=config_overrides``: SLURM schedules against
these numbers although the machine has fewer cores and no GPU, so the profile's real requests
(``--gpus``, ``--cpus-per-task``, ``--mem``, ``-p``, ``-A``) go through sbatch unchanged. The
GPUs are bookkeeping only (their device files are links to /dev/null); jobs run on the CPU.

As a command (for a manual try, see docs/cluster.md)::

    python tests/slurm/minicluster.py start /tmp/ldpm-slurm   # prints `export SLURM_CONF=...`
    python tests/slurm/minicluster.py stop /tmp/ldpm-slurm
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from string import Template

HERE = Path(__file__).resolve().parent
#: Debian packages that provide every binary below (bookworm: SLURM 22.05, MariaDB 10.11).
APT_PACKAGES = ["slurm-wlm", "slurmdbd", "munge", "mariadb-server"]
BINARIES = ["munged", "munge", "mariadbd", "mariadb-install-db", "slurmdbd", "slurmctld",
            "slurmd", "sbatch", "srun", "sacct", "sacctmgr", "squeue", "sinfo", "scontrol",
            "scancel"]
CLIENTS = ["sbatch", "srun", "sacct", "sacctmgr", "squeue", "sinfo", "scontrol", "scancel",
           "sshare"]
CLUSTER = "ldpmci"
PARTITION = "main"
ACCOUNT = "ldpm"


def _which(name: str) -> str | None:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if _which(b) is None]


def ensure_installed(log=print) -> str | None:
    """Install the Debian packages if a binary is missing. Returns None, or why it can't."""
    if not missing_binaries():
        return None
    if shutil.which("apt-get") is None:
        return f"missing {missing_binaries()} and no apt-get on this machine"
    if os.geteuid() != 0:
        return f"missing {missing_binaries()} and not root, so apt-get install is not possible"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    log(f"installing {' '.join(APT_PACKAGES)} with apt-get")
    for cmd in (["apt-get", "update", "-q"],
                ["apt-get", "install", "-y", "-q", "--no-install-recommends", *APT_PACKAGES]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            return f"`{' '.join(cmd)}` failed: {(proc.stdout + proc.stderr)[-1500:]}"
    still = missing_binaries()
    return f"still missing after apt-get install: {still}" if still else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


class MiniSlurm:
    """One-node SLURM with accounting, rooted at ``root`` (created; must be short-ish)."""

    def __init__(self, root: Path, cpus: int = 16, mem_mb: int = 64000, gpus: int = 4,
                 gpu_type: str = "a100", min_job_age: int = 600):
        self.root = Path(root).resolve()
        self.cpus, self.mem_mb, self.gpus, self.gpu_type = cpus, mem_mb, gpus, gpu_type
        self.min_job_age = min_job_age
        self.host = socket.gethostname().split(".")[0]
        self.etc, self.log, self.run = self.root / "etc", self.root / "log", self.root / "run"
        self.conf = self.etc / "slurm.conf"
        self.procs: dict[str, subprocess.Popen] = {}

    # ----------------------------------------------------------------------- environment
    @property
    def env(self) -> dict[str, str]:
        """Variables that point SLURM's client commands at this cluster.

        SLURM_CONF alone is not enough: the executor plugin's job step drops every SLURM_*
        variable before its nested `srun` (on a real cluster srun finds /etc/slurm). So PATH
        also starts with shims of the client commands that set SLURM_CONF for themselves.
        """
        return {"SLURM_CONF": str(self.conf),
                "PATH": f"{self.root / 'bin'}:{os.environ.get('PATH', '')}"}

    def _env(self) -> dict[str, str]:
        return dict(os.environ, **self.env)

    def cmd(self, *args: str, check: bool = True, timeout: float = 60) -> str:
        proc = subprocess.run(list(args), env=self._env(), capture_output=True, text=True,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n"
                               f"{proc.stderr}\n{self.log_tails()}")
        return proc.stdout

    # ----------------------------------------------------------------------- config
    def write_config(self) -> None:
        for d in ("etc", "log", "run", "state", "db", "dev", "bin", f"spool/{self.host}"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        munge_dir = self.root / "munge"
        munge_dir.mkdir(mode=0o700, exist_ok=True)
        key = munge_dir / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
            key.chmod(0o400)
        for i in range(self.gpus):  # GRES needs device files; /dev/null stands in for a GPU
            dev = self.root / "dev" / f"gpu{i}"
            if not dev.is_symlink():
                dev.symlink_to("/dev/null")
        for name in filter(_which, CLIENTS):
            shim = self.root / "bin" / name
            shim.write_text(f'#!/bin/sh\nSLURM_CONF={self.conf} exec {_which(name)} "$@"\n')
            shim.chmod(0o755)
        ports = {"ctld": free_port(), "slurmd": free_port(), "dbd": free_port(),
                 "db": free_port()}
        (self.root / "ports.json").write_text(json.dumps(ports))
        values = dict(root=str(self.root), host=self.host, cluster=CLUSTER, partition=PARTITION,
                      cpus=self.cpus, mem_mb=self.mem_mb, gpus=self.gpus,
                      gpu_type=self.gpu_type, last_gpu=self.gpus - 1,
                      min_job_age=self.min_job_age, munge_socket=str(munge_dir / "munge.sock"),
                      ctld_port=ports["ctld"], slurmd_port=ports["slurmd"],
                      dbd_port=ports["dbd"], db_port=ports["db"])
        for name in ("slurm.conf", "slurmdbd.conf", "gres.conf"):
            text = Template((HERE / f"{name}.in").read_text()).substitute(values)
            (self.etc / name).write_text(text)
        (self.etc / "slurmdbd.conf").chmod(0o600)  # slurmdbd refuses a readable config

    # ----------------------------------------------------------------------- daemons
    def _spawn(self, name: str, args: list[str]) -> None:
        out = open(self.log / f"{name}.out", "ab")
        self.procs[name] = subprocess.Popen(args, env=self._env(), stdout=out,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
        (self.run / f"{name}.pid").write_text(str(self.procs[name].pid))

    def _wait(self, what: str, ok, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited ({p.returncode}) while waiting for "
                                       f"{what}\n{self.log_tails()}")
            try:
                if ok():
                    return
            except (subprocess.SubprocessError, OSError, RuntimeError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"timed out after {timeout}s waiting for {what}\n{self.log_tails()}")

    def start(self) -> dict[str, str]:
        """Start all daemons; returns the environment for SLURM clients (SLURM_CONF)."""
        self.write_config()
        ports = json.loads((self.root / "ports.json").read_text())
        munge_dir = self.root / "munge"
        sock = munge_dir / "munge.sock"
        self._spawn("munged", [_which("munged"), "--foreground", "--force",
                               f"--key-file={munge_dir / 'munge.key'}", f"--socket={sock}",
                               f"--pid-file={self.run / 'munged.daemon.pid'}",
                               f"--log-file={self.log / 'munged.log'}",
                               f"--seed-file={munge_dir / 'seed'}"])
        self._wait("munged", lambda: subprocess.run(
            [_which("munge"), "-S", str(sock), "-n"], capture_output=True).returncode == 0)

        db = self.root / "db"
        if not (db / "mysql").exists():
            self.cmd(_which("mariadb-install-db"), "--no-defaults", "--user=root",
                     f"--datadir={db}", "--skip-test-db",
                     "--auth-root-authentication-method=normal", timeout=120)
        # no grant tables: the database only listens on 127.0.0.1 of a throwaway cluster
        self._spawn("mariadbd", [_which("mariadbd"), "--no-defaults", "--user=root",
                                 f"--datadir={db}", f"--socket={self.run / 'mysql.sock'}",
                                 f"--port={ports['db']}", "--bind-address=127.0.0.1",
                                 f"--pid-file={self.run / 'mariadbd.daemon.pid'}",
                                 f"--log-error={self.log / 'mariadbd.err'}",
                                 "--skip-grant-tables", "--innodb-buffer-pool-size=64M",
                                 "--innodb-lock-wait-timeout=900"])
        self._wait("mariadbd", lambda: _port_open(ports["db"]))

        self._spawn("slurmdbd", [_which("slurmdbd"), "-D"])
        self._wait("slurmdbd", lambda: _port_open(ports["dbd"]))
        if CLUSTER not in self.cmd("sacctmgr", "-n", "-P", "list", "cluster", "format=cluster"):
            self.cmd("sacctmgr", "-i", "add", "cluster", CLUSTER)
            self.cmd("sacctmgr", "-i", "add", "account", ACCOUNT, f"cluster={CLUSTER}",
                     "description=ldpm tests", "organization=ldpm")
            user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
            self.cmd("sacctmgr", "-i", "add", "user", user, f"account={ACCOUNT}",
                     f"cluster={CLUSTER}")

        self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i"])
        self._wait("slurmctld", lambda: _port_open(ports["ctld"]))
        self._spawn("slurmd", [_which("slurmd"), "-D", "-N", self.host])
        self._wait("the node to become idle",
                   lambda: self.cmd("sinfo", "-h", "-N", "-o", "%t", check=False).strip()
                   in ("idle", "mix", "alloc"), timeout=90)
        return self.env

    def stop(self) -> None:
        """Cancel jobs left over, then stop the daemons (newest first) by their process ids."""
        if self.procs.get("slurmctld") and self.procs["slurmctld"].poll() is None:
            def queued() -> list[str]:
                return self.cmd("squeue", "-h", "-o", "%i", check=False, timeout=30).split()
            if queued():
                self.cmd("scancel", *queued(), check=False, timeout=30)
                end = time.monotonic() + 20
                while time.monotonic() < end and queued():
                    time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "slurmdbd", "mariadbd", "munged"):
            p = self.procs.pop(name, None)
            if p is not None:
                _terminate(p.pid, lambda p=p: p.poll() is not None)
                p.wait(timeout=5)

    @classmethod
    def stop_from_pidfiles(cls, root: Path) -> None:
        """Stop the daemons of a cluster started by another process (``start`` command)."""
        run = Path(root) / "run"
        for name in ("slurmd", "slurmctld", "slurmdbd", "mariadbd", "munged"):
            f = run / f"{name}.pid"
            if f.exists():
                pid = int(f.read_text())
                _terminate(pid, lambda pid=pid: not _alive(pid))
                f.unlink()

    def log_tails(self, n: int = 15) -> str:
        out = []
        for f in sorted(self.log.glob("*")):
            lines = f.read_text(errors="replace").splitlines()[-n:]
            out.append(f"---- {f.name}\n" + "\n".join(lines))
        return "\n".join(out)

    def __enter__(self) -> "MiniSlurm":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _terminate(pid: int, gone, timeout: float = 15) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if gone():
            return
        time.sleep(0.2)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=["install", "start", "stop"])
    p.add_argument("root", type=Path, nargs="?", default=Path("/tmp/ldpm-slurm"))
    a = p.parse_args(argv)
    if a.action == "install":
        why = ensure_installed()
        if why:
            print(why, file=sys.stderr)
            return 1
        return 0
    if a.action == "stop":
        MiniSlurm.stop_from_pidfiles(a.root)
        return 0
    cluster = MiniSlurm(a.root)
    try:
        env = cluster.start()
    except BaseException:
        cluster.stop()
        raise
    # leave the daemons running; `stop` finds them by their pid files
    for name, value in env.items():
        print(f"export {name}={value}")
    print(f"# partition {PARTITION}, account {ACCOUNT}; stop with: {sys.argv[0]} stop {a.root}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
