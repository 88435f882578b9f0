"""A one-node SLURM cluster on this machine, from Debian's slurm-wlm and munge, for the profile test.

Everything (munge key and socket, slurm.conf, state, logs) lives in one temporary directory; the system's own
/etc/munge is not touched. /etc/slurm/slurm.conf and gres.conf become links to that directory while the cluster
runs, because the executor's job step strips SLURM_* variables (SLURM_CONF included) before its inner `srun`, which
then reads the default path as on any cluster node; the links are removed afterwards, and a machine that already
has its own /etc/slurm/slurm.conf is refused rather than touched. A link left by a test cluster whose run was killed
before it could remove it (its target gone, or a test cluster's conf whose slurmctld no longer runs) is replaced.
The daemons run as root.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo")
SYSTEM_CONF_DIR = Path("/etc/slurm")
INSTALL_HINT = "apt-get install slurm-wlm munge (or run `make test` as root, which installs them)"

# The node advertises more than the test machine has (config_overrides) so the profile's real per-rule requests
# (8 CPUs, up to 32 GB, one GPU) are scheduled as they would be on a cluster node; the tiny jobs use far less.
NODE_CPUS = 8
NODE_MEMORY_MB = 64000


def missing_programs() -> list[str]:
    return [name for name in PROGRAMS if shutil.which(name) is None]


CLUSTER_NAME = "vhumantest"


def _process_alive(pid_file: Path) -> bool:
    try:
        os.kill(int(pid_file.read_text().strip()), 0)
    except (OSError, ValueError):
        return False
    return True


def left_by_killed_test_cluster(conf: Path) -> bool:
    """True for a link to a test cluster's conf that nothing serves any more: a killed run's leftover."""
    if not conf.is_symlink():
        return False
    target = Path(os.readlink(conf))
    if not target.exists():
        return True
    try:
        text = target.read_text()
    except OSError:
        return False
    ours = f"ClusterName={CLUSTER_NAME}" in text.splitlines()
    return ours and not _process_alive(target.parent / "slurmctld.pid")


def system_conf_in_use() -> bool:
    """True when this machine has a slurm.conf of its own, which the test cluster must not replace."""
    conf = SYSTEM_CONF_DIR / "slurm.conf"
    return (conf.exists() or conf.is_symlink()) and not left_by_killed_test_cluster(conf)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _slurm_conf(root: Path, host: str) -> str:
    return f"""\
ClusterName={CLUSTER_NAME}
SlurmctldHost={host}(127.0.0.1)
AuthType=auth/munge
AuthInfo=socket={root}/munge/munge.socket
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
# Finished jobs stay visible to squeue for an hour: the executor's squeue status command and the test read them.
MinJobAge=3600
GresTypes=gpu
NodeName={host} NodeAddr=127.0.0.1 CPUs={NODE_CPUS} RealMemory={NODE_MEMORY_MB} Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def _stop(pid_file: Path) -> None:
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def _logs(root: Path) -> str:
    parts = []
    for log in sorted((root / "log").glob("*.log")) + [root / "munge" / "munged.log"]:
        if log.is_file():
            parts.append(f"--- {log.name}\n" + log.read_text(errors="replace")[-3000:])
    return "\n".join(parts)


@contextmanager
def one_node_cluster(root: Path):
    """Start munged, slurmctld and slurmd under `root`; yield the environment that points clients at them."""
    root = Path(root)
    for sub in ("munge", "state", "spool", "log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    host = socket.gethostname().split(".")[0]
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    conf = root / "slurm.conf"
    conf.write_text(_slurm_conf(root, host))
    # A count-only GPU: jobs that ask for --gres=gpu:1 are scheduled against it, as on a GPU node.
    (root / "gres.conf").write_text(f"NodeName={host} Name=gpu File=/dev/null\n")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    pid_files = [root / "slurmd.pid", root / "slurmctld.pid", root / "munge" / "munged.pid"]
    if system_conf_in_use():
        raise RuntimeError(f"{SYSTEM_CONF_DIR / 'slurm.conf'} exists; the test cluster will not replace it")
    SYSTEM_CONF_DIR.mkdir(parents=True, exist_ok=True)
    links = [SYSTEM_CONF_DIR / "slurm.conf", SYSTEM_CONF_DIR / "gres.conf"]
    try:
        for link in links:
            if link.is_symlink():
                link.unlink()
            link.symlink_to(root / link.name)
        subprocess.run(
            [
                "munged",
                "--force",
                f"--key-file={key}",
                f"--socket={root}/munge/munge.socket",
                f"--pid-file={root}/munge/munged.pid",
                f"--log-file={root}/munge/munged.log",
                f"--seed-file={root}/munge/munged.seed",
            ],
            check=True,
            capture_output=True,
        )
        subprocess.run(["slurmctld", "-f", str(conf)], check=True, env=env, capture_output=True)
        subprocess.run(["slurmd", "-f", str(conf)], check=True, env=env, capture_output=True)
        _wait_until_idle(host, env, root)
        yield env
    finally:
        for pid_file in pid_files:
            _stop(pid_file)
        for link in links:
            if link.is_symlink() and Path(os.readlink(link)).parent == root:
                link.unlink()


def _wait_until_idle(host: str, env: dict, root: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        proc = subprocess.run(["sinfo", "-h", "-n", host, "-o", "%T"], env=env, capture_output=True, text=True)
        state = proc.stdout.strip()
        if state == "idle":
            return
        time.sleep(0.5)
    raise RuntimeError(f"the test SLURM node did not become idle (state {state!r})\n{_logs(root)}")


def jobs_seen_by_squeue(env: dict) -> list[dict]:
    """Every job slurmctld still knows (MinJobAge keeps finished ones): id, comment, state, TRES per node."""
    proc = subprocess.run(
        ["squeue", "--states=all", "--noheader", "--format=%i|%k|%T|%b|%C|%m"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    keys = ("job_id", "comment", "state", "tres_per_node", "cpus", "min_memory")
    return [dict(zip(keys, line.split("|"), strict=True)) for line in proc.stdout.splitlines() if line.strip()]
