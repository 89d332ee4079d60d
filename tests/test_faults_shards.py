"""The shard builder under an outsider's faults: every input row or file ends in a shard or in errors.jsonl
with its real line and reason, special files never hang the build, a full disk is one clear line (exit 2)
and leaves nothing a resume would trust, and a build killed at seeded random points ends byte-identical.

Random points: test_killed_at_random_points_then_rerun_is_identical draws KILLS = 6 kill points (seed 8)
per run, each a SIGKILL the child build sends itself at its n-th write / fsync / rename / unlink, so the
test cannot race. Cost: ~10 s on 2 cores (8 child interpreters of ~0.8 s each; the rest is sub-second).
"""

from __future__ import annotations

import errno
import io
import json
import os
import random
import signal
import socket
import stat
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from PIL import Image

from fashiontune.cli import main
from fashiontune.records import Record, Skip
from fashiontune.shards import writer
from fashiontune.shards.build import build_shards
from fashiontune.shards.config import ShardBuildConfig
from fashiontune.shards.errors import OutputError
from fashiontune.shards.testing import ListSource, make_corpus
from fashiontune.sources import SourceError, get_source


def jpeg(path: Path, colour=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), colour).save(path, "JPEG")
    return path


def read(source: str, inp: Path, **opts) -> tuple[dict[str, Record], list[Skip]]:
    items = list(get_source(source, **opts).iter_records(inp))
    return ({r.id: r for r in items if isinstance(r, Record)}, [r for r in items if isinstance(r, Skip)])


def build(source: str, inp: Path, out: Path, *flags: str) -> int:
    return main(["shards", "build", "--source", source, "--input", str(inp), "--out", str(out), "--image-size", "16",
                 "--shard-size", "4", "--workers", "1", "--max-bad-fraction", "1", "--quiet", *flags])


def errors_of(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "errors.jsonl").read_text(encoding="utf-8").splitlines()]


def tree(out: Path) -> dict[str, bytes]:
    """Every file under `out` but config.yaml (which names the output folder)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != "config.yaml"}


# ------------------------------------------------------------------------------------------- CSV rows

def _catalogue(tmp_path: Path, bad: str, n: int = 32) -> Path:
    """items.csv: n rows; row 4 (line 5) replaced by `bad`; images exist for every row."""
    rows = [f"img/{i}.jpg,caption {i},{'red' if i % 2 else 'blue'}" for i in range(n)]
    rows[3] = bad
    for i in range(n):
        jpeg(tmp_path / f"img/{i}.jpg")
    (tmp_path / "items.csv").write_text("image,caption,colour\n" + "\n".join(rows) + "\n")
    return tmp_path


@pytest.mark.parametrize("bad", [
    'img/3.jpg,"unclosed caption,red',  # no quote anywhere after it: csv would read to the end of the file
    'img/3.jpg,"unclosed caption,red\nimg/x.jpg,"swallowed",blue',  # closes at a later quote: strict error
    'img/3.jpg,"unclosed caption,red\nimg/x.jpg,so,blue\nimg/y.jpg,",blue',  # closes cleanly, right cell count
])
def test_unclosed_quote_is_reported_at_its_line_and_the_rows_after_it_are_kept(tmp_path, bad):
    inp = _catalogue(tmp_path, bad)
    recs, skips = read("csv", inp)
    assert [(s.reason, s.path.rsplit(":", 1)[1]) for s in skips][:1] == [("unparsable_row", "5")]
    assert "quote" in skips[0].detail and "only this line is skipped" in skips[0].detail
    kept = {r.meta["line"] for r in recs.values()}
    after = 6 + bad.count("\n")  # the first line of the rows written after the bad text
    assert set(range(after, after + 28)) <= kept, "the 28 rows after the bad one are read"
    assert {2, 3, 4} <= kept and 5 not in kept
    lines_reported = {int(s.path.rsplit(":", 1)[1]) for s in skips}
    every_line = set(range(2, after + 28))
    assert kept | lines_reported == every_line and not kept & lines_reported, "each line: a row or an error"


def test_a_quoted_caption_may_span_lines(tmp_path):
    inp = _catalogue(tmp_path, 'img/3.jpg,"a caption\nover two lines, soft",red')
    recs, skips = read("csv", inp)
    assert not skips and len(recs) == 32
    assert recs["img__3_jpg"].text == "a caption over two lines, soft" and recs["img__4_jpg"].meta["line"] == 7


def test_unclosed_quote_in_kagl_and_imaterialist_costs_one_line(tmp_path):
    kagl = tmp_path / "kagl"
    (kagl / "images").mkdir(parents=True)
    head = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName\n"
    rows = [f"{100 + i},Men,Apparel,Topwear,Shirts,Blue,Fall,2011,Casual,Shirt {i}" for i in range(10)]
    rows[2] = '102,Men,Apparel,Topwear,Shirts,Blue,Fall,2011,Casual,"Shirt 2'
    rows[9] = '109,Men,Apparel,Topwear,Shirts,Blue,Fall,2011,Casual,"Shirt 9'  # the last line, no line break
    (kagl / "styles.csv").write_text(head + "\n".join(rows))
    recs, skips = read("kagl", kagl)
    assert [(s.reason, s.path.rsplit(":", 1)[1]) for s in skips] == [("unparsable_row", "4"), ("unparsable_row", "11")]
    assert len(recs) == 8
    im = tmp_path / "imat"
    (im / "train").mkdir(parents=True)
    (im / "label_descriptions.json").write_text(json.dumps({"categories": [{"id": 0, "name": "shirt"}],
                                                            "attributes": []}))
    (im / "train.csv").write_text("ImageId,EncodedPixels,Height,Width,ClassId\n"
                                  'a,1 2,4,4,0\nb,"1 2,4,4,0\nc,1 2,4,4,0\n')
    recs, skips = read("imaterialist", im)
    assert sorted(recs) == ["a", "c"] and [s.path.rsplit(":", 1)[1] for s in skips] == ["3"]


# ------------------------------------------------------------------------------------------- encodings

def test_non_utf8_bytes_are_reported_with_line_and_byte_offset_never_replaced(tmp_path):
    inp = tmp_path / "c"
    for i in range(4):
        jpeg(inp / f"{i}.jpg")
    lines = [b"image,caption,colour\n", b"0.jpg,a,red\n", b"1.jpg,b,r\xf6t\n", b"2.jpg,c,blue\n", b"3.jpg,d,red\n"]
    (inp / "items.csv").write_bytes(b"".join(lines))
    offset = len(b"".join(lines[:2])) + lines[2].index(b"\xf6")
    recs, skips = read("csv", inp)
    assert len(recs) == 3 and [(s.reason, s.path.rsplit(":", 1)[1]) for s in skips] == [("bad_encoding", "3")]
    assert f"byte offset {offset}" in skips[0].detail and "--encoding" in skips[0].detail
    out = tmp_path / "o"
    assert build("csv", inp, out) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["labels"]["colour"]["vocab"] == ["blue", "red"], "no r\ufffdt value is invented"
    assert [e["reason"] for e in errors_of(out)] == ["bad_encoding"]
    assert build("csv", inp, tmp_path / "latin", "--encoding", "latin-1") == 0  # the user names the encoding
    m = json.loads((tmp_path / "latin/manifest.json").read_text())
    assert m["labels"]["colour"]["vocab"] == ["blue", "red", "röt"] and m["params"]["encoding"] == "latin-1"
    assert build("csv", inp, tmp_path / "x", "--encoding", "klingon") == 2


def test_non_utf8_json_and_label_files_of_deepfashion(tmp_path):
    from fashiontune.synth import generate

    inp = generate("deepfashion-mm", tmp_path / "df", 6, seed=3, quirk_rate=0.0)
    shape = inp / "labels/shape/shape_anno_all.txt"
    first = shape.read_bytes().split(b"\n")
    first[1] = first[1].replace(b"-", b"-\xe9", 1)
    shape.write_bytes(b"\n".join(first))
    recs, skips = read("deepfashion-mm", inp)
    assert [(s.reason, s.path.rsplit(":", 1)[1]) for s in skips] == [("bad_encoding", "2")]
    caps = inp / "captions.json"
    caps.write_bytes(caps.read_bytes().replace(b"The", b"Th\xe9", 1))
    with pytest.raises(SourceError, match=r"captions\.json: bytes b'\\xe9' at line \d+, byte offset \d+ .*--encoding"):
        read("deepfashion-mm", inp)


# ------------------------------------------------------------------------------------ files and names

@contextmanager
def deadline(seconds: int):
    """Fail (instead of hanging the suite) if the block blocks."""
    def boom(*_):
        raise TimeoutError(f"blocked for {seconds} s")
    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_fifo_socket_and_device_named_jpg_are_refused_without_blocking(tmp_path):
    inp = tmp_path / "c"
    jpeg(inp / "shirts/a.jpg")
    os.mkfifo(inp / "shirts/fifo.jpg")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(inp / "shirts/sock.jpg"))
    expected = {"shirts__fifo_jpg", "shirts__sock_jpg"}
    try:
        os.mknod(inp / "shirts/dev.jpg", 0o600 | stat.S_IFCHR, os.makedev(1, 5))  # /dev/zero
        expected.add("shirts__dev_jpg")
    except (PermissionError, OSError):
        pass  # no CAP_MKNOD here: FIFO and socket still prove the check
    out = tmp_path / "o"
    with deadline(60):
        assert build("folder", inp, out) == 0
    errs = {e["id"]: e for e in errors_of(out)}
    assert set(errs) == expected and {e["reason"] for e in errs.values()} == {"special_file"}
    assert "FIFO" in errs["shirts__fifo_jpg"]["detail"]
    assert json.loads((out / "manifest.json").read_text())["items"]["written"] == 1
    sock.close()


def test_non_utf8_file_name_is_reported_and_the_build_goes_on(tmp_path):
    inp = tmp_path / "c"
    jpeg(inp / "shirts/a.jpg")
    raw = os.fsencode(inp / "shirts") + b"/r\xf6t.jpg"
    with open(raw, "wb") as f:
        f.write((inp / "shirts/a.jpg").read_bytes())
    out = tmp_path / "o"
    assert build("folder", inp, out) == 0
    (err,) = errors_of(out)
    assert err["reason"] == "bad_filename" and err["path"].endswith("shirts/r\\xf6t.jpg") and "rename" in err["detail"]
    assert json.loads((out / "manifest.json").read_text())["items"] == {"listed": 2, "written": 1, "skipped": 1}


def test_symlinks_refused_unless_follow_symlinks(tmp_path):
    inp, elsewhere = tmp_path / "c", tmp_path / "elsewhere"
    jpeg(inp / "shirts/a.jpg")
    jpeg(elsewhere / "x.jpg", (0, 0, 200))
    (inp / "tees").symlink_to(inp / "shirts")  # a symlinked class folder
    (inp / "shirts/linked.jpg").symlink_to(elsewhere / "x.jpg")  # a symlinked image
    (inp / "shirts/loop").symlink_to(inp)  # followed, this would never end
    out = tmp_path / "o"
    assert build("folder", inp, out) == 0
    errs = {e["id"]: e for e in errors_of(out)}
    assert {i: e["reason"] for i, e in errs.items()} == {"shirts__linked_jpg": "symlink", "shirts__loop": "symlink",
                                                        "tees": "symlink"}
    assert all("--follow-symlinks" in e["detail"] for e in errs.values())
    out2 = tmp_path / "o2"
    assert build("folder", inp, out2, "--follow-symlinks") == 0
    errs = {e["id"]: e["reason"] for e in errors_of(out2)}
    assert errs == {"shirts__loop": "symlink", "tees__loop": "symlink"}, "with the flag only the loop is refused"
    m = json.loads((out2 / "manifest.json").read_text())
    assert m["items"]["written"] == 4 and m["labels"]["label"]["counts"] == {"shirts": 2, "tees": 2}
    assert m["params"]["follow_symlinks"] is True


def test_csv_paths_outside_the_input_refused_unless_allowed(tmp_path):
    inp = tmp_path / "cat"
    jpeg(inp / "img/in.jpg")
    outside = jpeg(tmp_path / "private.jpg")
    (inp / "items.csv").write_text(f"image,colour\nimg/in.jpg,red\n../private.jpg,red\n{outside},blue\n"
                                   "img/../img/in.jpg,red\n")
    out = tmp_path / "o"
    assert build("csv", inp, out) == 0
    errs = errors_of(out)
    assert [e["reason"] for e in errs] == ["outside_input", "outside_input"]
    assert all("--allow-outside-input" in e["detail"] for e in errs)
    assert json.loads((out / "manifest.json").read_text())["items"]["written"] == 2  # 'img/../img' stays inside
    out2 = tmp_path / "o2"
    assert build("csv", inp, out2, "--allow-outside-input") == 0
    assert json.loads((out2 / "manifest.json").read_text())["items"]["written"] == 4


def test_header_only_input_is_a_clear_error_exit_2(tmp_path, capsys):
    (tmp_path / "items.csv").write_text("image,caption,colour\n")
    assert build("csv", tmp_path, tmp_path / "o") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "items.csv has a header but no data rows" in err
    kagl = tmp_path / "kagl"
    (kagl / "images").mkdir(parents=True)
    (kagl / "styles.csv").write_text("id,gender,masterCategory,subCategory,articleType,baseColour,season,year,"
                                     "usage,productDisplayName\n")
    assert build("kagl", kagl, tmp_path / "o2") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "lists no items" in err and not (tmp_path / "o2/manifest.json").exists()


# ------------------------------------------------------------------------------------------- disk full

N = 24


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    recs = make_corpus(root, N, seed=5, quirks=["", "missing", "", "garbage"])
    ref = tmp_path_factory.mktemp("ref")
    build_shards(cfg_for(root, ref), ListSource(recs))
    return root, recs, ref


def cfg_for(root, out) -> ShardBuildConfig:
    return ShardBuildConfig(input=str(root), out=str(out), image_size=16, shard_size=4, workers=1, progress=False,
                            max_bad_fraction=0.5)


class _Full(io.FileIO):
    """A file on a disk that fills up: writes fail with ENOSPC once the shared budget is spent."""

    budget = [0]

    def write(self, b) -> int:
        if len(b) > self.budget[0]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.budget[0] -= len(b)
        return super().write(b)


def _full_disk(monkeypatch, budget: int, only: str = ""):
    """Route the builder's output files through _Full; `only`: just the files whose name contains it."""
    real = writer.open_output
    _Full.budget[0] = budget

    def open_output(path, mode):
        if only not in Path(path).name:
            return real(path, mode)
        buf = io.BufferedWriter(_Full(path, "w"))
        return buf if "b" in mode else io.TextIOWrapper(buf, encoding="utf-8")

    monkeypatch.setattr(writer, "open_output", open_output)


@pytest.mark.parametrize("where,budget,only", [
    (r"train/shard-\d+\.tar", 3000, ".tar"), ("_state/plan.json", 100, "plan.json"),
    ("/manifest.json", 100, "manifest.json"), ("/errors.jsonl", 10, "errors.jsonl"), ("", 12000, ""),
], ids=["shard", "plan.json", "manifest.json", "errors.jsonl", "any-file"])
def test_disk_full_is_one_clear_line_and_a_rerun_finishes_identically(corpus, tmp_path, monkeypatch, where, budget,
                                                                     only):
    root, recs, ref = corpus
    out = tmp_path / "o"
    _full_disk(monkeypatch, budget, only)
    with pytest.raises(OutputError, match=rf"cannot write \S+{where}: No space left on device \(ENOSPC\); free space"):
        build_shards(cfg_for(root, out), ListSource(recs))
    assert not list(out.rglob("*.partial")), "nothing half-written is left behind"
    assert not (out / "manifest.json").exists()
    monkeypatch.undo()
    build_shards(cfg_for(root, out), ListSource(recs))
    assert tree(out) == tree(ref)


def test_disk_full_through_the_cli_exits_2_without_traceback(tmp_path, monkeypatch, capsys):
    inp = tmp_path / "c"
    for i in range(6):
        jpeg(inp / f"shirts/{i}.jpg", (i * 40, 0, 0))
    _full_disk(monkeypatch, 2000, ".tar")
    assert build("folder", inp, tmp_path / "o") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert err.startswith("fashiontune shards: cannot write ") and "shard-000000.tar: No space left on device" in err


@contextmanager
def tiny_tmpfs(path: Path, size: str):
    path.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_a_real_full_disk(corpus, tmp_path, capsys):
    root, recs, ref = corpus
    size = sum(p.stat().st_size for p in ref.rglob("*.tar")) // 2
    with tiny_tmpfs(tmp_path / "small", f"{size // 1024 + 8}k") as small:
        with pytest.raises(OutputError, match=r"No space left on device \(ENOSPC\); free space"):
            build_shards(cfg_for(root, small), ListSource(recs))
        assert not list(small.rglob("*.partial")) and not (small / "manifest.json").exists()


# ------------------------------------------------------------------------------------ killed at random

KILLS, SEED = 6, 8
CHILD = """
import io, os, signal, sys
from pathlib import Path
from fashiontune.shards import writer
from fashiontune.shards.build import build_shards
from fashiontune.shards.config import ShardBuildConfig
from fashiontune.shards.testing import ListSource, make_corpus

root, out, kill_at = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
count = 0


def point(torn=None):
    # fault point: every write, fsync, rename and unlink of the build; the kill_at-th one dies (SIGKILL)
    global count
    count += 1
    if count == kill_at:
        if torn is not None:
            torn()  # half of the bytes reach the file first: a torn write
        os.kill(os.getpid(), signal.SIGKILL)


class Raw(io.FileIO):
    def write(self, b):
        point(lambda: io.FileIO.write(self, bytes(b[: len(b) // 2])))
        return super().write(b)


def open_output(path, mode):
    buf = io.BufferedWriter(Raw(path, "w"))
    return buf if "b" in mode else io.TextIOWrapper(buf, encoding="utf-8")


writer.open_output = open_output
for name in ("replace", "fsync", "unlink"):
    real = getattr(os, name)
    setattr(os, name, lambda *a, _real=real, **k: (point(), _real(*a, **k))[1])
recs = make_corpus(root, %d, seed=5, quirks=["", "missing", "", "garbage"], write=False)
build_shards(ShardBuildConfig(input=str(root), out=str(out), image_size=16, shard_size=4, workers=1,
                              progress=False, max_bad_fraction=0.5), ListSource(recs))
print(count)
"""


def test_killed_at_random_points_then_rerun_is_identical(corpus, tmp_path):
    root, recs, ref = corpus
    script = tmp_path / "child.py"
    script.write_text(CHILD % N)

    def run(out: Path, kill_at: int) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(script), str(root), str(out), str(kill_at)], capture_output=True,
                              text=True, timeout=120)

    clean = run(tmp_path / "clean", 0)
    assert clean.returncode == 0, clean.stderr
    events = int(clean.stdout.split()[-1])
    assert tree(tmp_path / "clean") == tree(ref)
    points = sorted(random.Random(SEED).sample(range(1, events + 1), KILLS))
    out = tmp_path / "killed"
    for prev, at in zip([0] + points, points):
        # each rerun dies `at - prev` fault points in: together they walk the whole build once
        r = run(out, at - prev)
        assert r.returncode == -signal.SIGKILL, f"not killed at point {at} of {events}: {r.stderr[-2000:]}"
        assert not (out / "manifest.json").exists()
    done = run(out, 0)
    assert done.returncode == 0, done.stderr
    assert tree(out) == tree(ref)  # shards, their sha256 records, plan, errors.jsonl and manifest: byte-identical


def test_text_that_is_not_unicode_never_reaches_a_shard(corpus, tmp_path):
    """A lone surrogate (a JSON "\\ud800" escape) or undecodable bytes from any source: an error line, no crash."""
    root, recs, _ = corpus
    good = [r for r in recs if isinstance(r, Record)]
    odd = [Record(id="lone", group_id="lone", image_path=good[0].image_path, text="caption \ud800"),
           Skip(id="bytes", path=os.fsdecode(b"/in/r\xf6t.jpg"), reason="bad_filename", detail="")]
    build_shards(cfg_for(root, tmp_path / "o"), ListSource(good + odd))
    errs = {e["id"]: e for e in errors_of(tmp_path / "o")}
    assert errs["lone"]["reason"] == "bad_encoding" and "text" in errs["lone"]["detail"]
    assert errs["bytes"]["path"] == "/in/r\\xf6t.jpg"
