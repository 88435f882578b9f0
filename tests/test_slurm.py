"""The SLURM profile on a real (one-node) SLURM: the tiny demo DAG is submitted through snakemake's slurm executor."""

import os
import re
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import REPO
from tests.slurm_cluster import (
    CLUSTER_NAME,
    INSTALL_HINT,
    jobs_seen_by_squeue,
    left_by_killed_test_cluster,
    missing_programs,
    one_node_cluster,
    system_conf_in_use,
)
from tests.test_workflow import SNAKEMAKE, TINY, workdir_copy

PROFILE = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
GPU_RULES = {rule for rule, res in PROFILE["set-resources"].items() if "gpu" in str(res.get("gres", ""))}


def require_slurm() -> None:
    problems = []
    if missing_programs():
        problems.append(f"missing {', '.join(missing_programs())}: {INSTALL_HINT}")
    if system_conf_in_use():
        problems.append("this machine has its own /etc/slurm/slurm.conf, which the test cluster will not replace")
    if os.geteuid() != 0:
        problems.append("the one-node test cluster's daemons need root")
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        problems.append("snakemake-executor-plugin-slurm is not installed (pip install -e '.[test]')")
    if problems:
        message = "SLURM test cannot run: " + "; ".join(problems)
        if os.environ.get("VHUMAN_REQUIRE_SLURM"):
            pytest.fail(message)
        pytest.skip(message)


def local_rules() -> set[str]:
    """Rules named in a `localrules:` directive: they run beside the scheduler, not as SLURM jobs."""
    names = set()
    for smk in [REPO / "Snakefile", *(REPO / "workflow" / "rules").glob("*.smk")]:
        for block in re.findall(r"localrules:\s*\n((?:\s+\w+,?\n)+)", smk.read_text()):
            names.update(re.findall(r"\w+", block))
    return names


def planned_jobs(work, env) -> dict[str, int]:
    """Rule -> job count of a dry run, read from snakemake's own job-stats table."""
    proc = subprocess.run(
        [SNAKEMAKE, "-n", "--configfile", "tiny.yaml"], cwd=work, env=env, capture_output=True, text=True, check=True
    )
    table = proc.stdout.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    counts = {}
    for line in table.splitlines():
        match = re.fullmatch(r"(\w+)\s+(\d+)", line.strip())
        if match and match.group(1) != "total":
            counts[match.group(1)] = int(match.group(2))
    return counts


@pytest.mark.slow
def test_tiny_dag_runs_on_slurm_through_the_profile(tmp_path):
    require_slurm()
    work = workdir_copy(tmp_path)
    shutil.copytree(REPO / "profiles", work / "profiles")
    (work / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    with one_node_cluster(tmp_path / "slurm") as env:
        # As the README tells a user: account and partition come from the environment.
        env = {**env, "SLURM_ACCOUNT": "vhuman", "SLURM_PARTITION": "debug"}
        planned = planned_jobs(work, env)
        proc = subprocess.run(
            [
                SNAKEMAKE,
                "--profile",
                "profiles/slurm",
                "--configfile",
                "tiny.yaml",
                # No accounting database here: read job states from squeue (MinJobAge keeps finished jobs).
                "--slurm-status-command",
                "squeue",
                "--slurm-init-seconds-before-status-checks",
                "2",
            ],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=1500,
        )
        jobs = jobs_seen_by_squeue(env)
    assert proc.returncode == 0, f"snakemake on SLURM failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"

    # Every planned job but the local target ran as a SLURM job, and each one completed.
    ran = {}
    for job in jobs:
        rule = job["comment"].removeprefix("rule_").split("_wildcards_")[0]
        ran.setdefault(rule, []).append(job)
    expected = {rule: count for rule, count in planned.items() if rule not in local_rules()}
    assert {rule: len(js) for rule, js in ran.items()} == expected
    assert all(job["state"] == "COMPLETED" for job in jobs), jobs
    assert "finetune" in ran and "evaluate_control" in ran
    # The sharded stages ran one SLURM job per shard, each its own GPU job.
    assert len(ran["generate_shard"]) == TINY["generate"]["shards"] == 2
    assert len(ran["segment_shard"]) == TINY["segmentation"]["shards"] == 2

    # GPU rules asked SLURM for a GPU and the profile's CPUs and memory; the others did not ask for a GPU.
    for rule, rule_jobs in ran.items():
        for job in rule_jobs:
            if rule in GPU_RULES:
                assert "gpu:1" in job["tres_per_node"], (rule, job)
                assert job["cpus"] == str(PROFILE["set-resources"][rule]["cpus_per_task"]), (rule, job)
            else:
                assert "gpu" not in job["tres_per_node"], (rule, job)
    assert ran["finetune"][0]["min_memory"] == f"{PROFILE['set-resources']['finetune']['mem_mb']}M"

    results = work / "results"
    assert (results / "finetuned.pth").is_file()
    assert (results / "evaluation" / "control.json").is_file()
    assert "fine-tune" in (work / "logs" / "finetune.log").read_text()


def rules_declaring_a_gpu() -> set[str]:
    """Rules whose `resources:` block says gpu=1, read from the rule files."""
    found = set()
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        for block in re.split(r"\n\s*rule ", smk.read_text())[1:]:
            name = block.split(":", 1)[0].strip()
            if re.search(r"resources:\s*\n\s*gpu=1", block):
                found.add(name)
    return found


def test_local_rules_are_found():
    assert {"all", "report_tables", "download_generator", "download_bisenet"} <= local_rules()


def test_profile_asks_slurm_for_a_gpu_for_exactly_the_gpu_rules():
    assert GPU_RULES == rules_declaring_a_gpu()
    assert set(PROFILE["set-threads"]) == GPU_RULES


def test_local_profile_runs_gpu_rules_one_at_a_time(tmp_path):
    work = workdir_copy(tmp_path)
    shutil.copytree(REPO / "profiles", work / "profiles")
    proc = subprocess.run(
        [SNAKEMAKE, "--profile", "profiles/local", "-n"], cwd=work, capture_output=True, text=True, check=True
    )
    assert "rule finetune:" in proc.stdout
    local = yaml.safe_load((REPO / "profiles" / "local" / "config.yaml").read_text())
    assert "gpu=1" in local["resources"]


def test_a_killed_test_clusters_link_is_told_from_a_machines_own_conf(tmp_path):
    own = tmp_path / "own.conf"
    own.write_text("ClusterName=site\n")
    assert not left_by_killed_test_cluster(own), "a plain file is the machine's own"
    link = tmp_path / "slurm.conf"
    link.symlink_to(own)
    assert not left_by_killed_test_cluster(link), "a link to another cluster's conf"

    cluster = tmp_path / "cluster"
    cluster.mkdir()
    (cluster / "slurm.conf").write_text(f"ClusterName={CLUSTER_NAME}\n")
    link.unlink()
    link.symlink_to(cluster / "slurm.conf")
    (cluster / "slurmctld.pid").write_text(f"{os.getpid()}\n")
    assert not left_by_killed_test_cluster(link), "a test cluster whose slurmctld still runs"
    dead = subprocess.Popen(["true"])
    dead.wait()
    (cluster / "slurmctld.pid").write_text(f"{dead.pid}\n")
    assert left_by_killed_test_cluster(link), "a test cluster whose slurmctld is gone"
    shutil.rmtree(cluster)
    assert left_by_killed_test_cluster(link), "a link whose target is gone"
