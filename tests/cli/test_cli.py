"""The CLI contract (issue #3): build / run / inspect / validate, one-line errors, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def hmexport(*args: str, env_cache=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hmexport.cli.app", *map(str, args)], capture_output=True, text=True, timeout=600)


def test_help_lists_commands():
    done = hmexport("--help")
    assert done.returncode == 0
    for command in ("build", "run", "inspect", "validate", "bench"):
        assert command in done.stdout


def test_build_preset_run_json_and_inspect(tmp_path):
    out = tmp_path / "bundle"
    done = hmexport("build", "jamba-tiny", "--out", out, "--max-tokens", "128", "--chunk", "16")
    assert done.returncode == 0, done.stderr
    assert "validation passed" in done.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["validation"]["passed"] is True and manifest["limits"] == {"max_tokens": 128, "prefill_chunk": 16}

    run = hmexport("run", out, "--input-ids", "1,17,42", "--max-new-tokens", "5", "--ignore-eos", "--json")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert len(result["token_ids"]) == 5 and isinstance(result["text"], str)

    streamed = hmexport("run", out, "--prompt", "The weather today", "--max-new-tokens", "4")
    assert streamed.returncode == 0, streamed.stderr

    inspect = hmexport("inspect", out, "--json")
    info = json.loads(inspect.stdout)
    assert info["state"]["kv_bytes_per_token"] == 2 * 2 * 2 * 16 * 4  # 2 attention layers x (K, V) x Hkv 2 x Dh 16 x fp32

    validate = hmexport("validate", out)
    assert validate.returncode == 0, validate.stderr
    assert "passed" in validate.stdout and "max abs diff" in validate.stdout


def test_user_errors_are_one_line_without_traceback(tmp_path):
    done = hmexport("build", tmp_path / "nowhere", "--out", tmp_path / "b")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().startswith("error:") and "neither a checkpoint directory nor a preset" in done.stderr
    assert not (tmp_path / "b").exists()


def test_prompt_needs_a_tokenizer(tmp_path):
    from helpers import MAMBA
    from hmexport.models.presets import write_checkpoint

    ckpt = write_checkpoint("mamba", MAMBA, tmp_path / "ckpt", tokenizer_vocab=None)
    out = tmp_path / "bundle"
    assert hmexport("build", ckpt, "--out", out, "--no-validate").returncode == 0
    done = hmexport("run", out, "--prompt", "hi")
    assert done.returncode == 2 and "has no tokenizer" in done.stderr and "--input-ids" in done.stderr
    ok = hmexport("run", out, "--input-ids", "4,5,6", "--max-new-tokens", "3", "--json")
    assert ok.returncode == 0 and len(json.loads(ok.stdout)["token_ids"]) <= 3


@pytest.mark.parametrize("args,message", [
    (("--input-ids", "1,x"), "--input-ids: expected comma-separated integers"),
    ((), "give exactly one of --prompt TEXT or --input-ids"),
])
def test_run_argument_errors(bundles, args, message):
    done = hmexport("run", bundles["jamba-moe"], *args)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_run_with_images_and_plan(tmp_path):
    from PIL import Image
    from skimage import data

    out = tmp_path / "llava"
    assert hmexport("build", "llava-jamba-tiny", "--out", out, "--max-tokens", "256").returncode == 0
    Image.fromarray(data.astronaut()).save(tmp_path / "a.jpg")
    Image.fromarray(data.coffee()).save(tmp_path / "b.png")
    done = hmexport("run", out, "--image", tmp_path / "a.jpg", "--image", tmp_path / "b.png", "--prompt", "Compare <image> with <image>:",
                    "--max-new-tokens", "4", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["prompt_tokens"] >= 32 and len(result["token_ids"]) <= 4

    wrong = hmexport("run", out, "--image", tmp_path / "a.jpg", "--prompt", "<image> and <image>")
    assert wrong.returncode == 2 and "2 <image> placeholder(s) but 1 image(s)" in wrong.stderr
    (tmp_path / "text.jpg").write_text("not an image")
    bad = hmexport("run", out, "--image", tmp_path / "text.jpg", "--prompt", "x")
    assert bad.returncode == 2 and "text.jpg" in bad.stderr and "Traceback" not in bad.stderr

    plan = hmexport("plan", out, "--images", "10", "--prompt-tokens", "20", "--new-tokens", "8", "--json", "--device-memory", "1GiB")
    assert plan.returncode == 0, plan.stderr
    info = json.loads(plan.stdout)
    assert info["context_tokens"] == 10 * 16 + 28 and info["max_images"] == (256 - 28) // 16


def test_convert_cobra_needs_the_explicit_flag(tmp_path):
    from hmexport.models.cobra_tiny import BACKBONES, write_replica

    paths = write_replica(tmp_path / "native")
    (tmp_path / "backbones.json").write_text(json.dumps(BACKBONES))
    args = ["convert", "cobra", paths["pickle"], "--out", tmp_path / "converted", "--dino-weights", paths["dino"],
            "--siglip-weights", paths["siglip"], "--backbones", tmp_path / "backbones.json"]
    refused = hmexport(*args)
    assert refused.returncode == 2 and "pass --allow-pickle" in refused.stderr and not (tmp_path / "converted").exists()
    done = hmexport(*args, "--allow-pickle")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "converted" / "config.json").is_file() and not list((tmp_path / "converted").glob("*.pt"))
