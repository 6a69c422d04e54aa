"""Exports open in the usual tools: the adapter in PEFT, the merged model in transformers (same answers), the
GGUF in llama.cpp, and the training data in `datasets`, each with its card."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from assistant.config import Settings
from assistant.errors import Conflict, InvalidRequest, NotFound
from assistant.store import Database
from tests.conftest import REPO, SECRET_EMAIL, SECRET_PHONE, add_adapter_version, recipe_shaped_lora, register_adapter
from training.export import export_datasets, export_version

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


def greedy(model, tokenizer, new_tokens: int = 12) -> tuple[list[int], torch.Tensor]:
    ids = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt")
    ids = ids if isinstance(ids, torch.Tensor) else ids["input_ids"]
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False
        )
        logits = model(input_ids=ids).logits[0, -1]
    return out[0, ids.shape[1] :].tolist(), logits


def test_adapter_and_merged_exports_reload_and_answer_alike(settings, tiny_model_dir, tmp_path):
    from peft import PeftModel

    database = Database(settings.db)
    add_adapter_version(database, tiny_model_dir, tmp_path / "v1", "v1")
    adapter = export_version(database, settings, "v1", "adapter", tmp_path / "out-adapter", "boss")
    merged = export_version(database, settings, "v1", "merged", tmp_path / "out-merged", "boss")
    assert "adapter_model.safetensors" in adapter["files"] and "README.md" in adapter["files"]
    assert "model.safetensors" in merged["files"] and "tokenizer.json" in merged["files"]

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    _, base_logits = greedy(base, tokenizer)
    with_adapter = PeftModel.from_pretrained(base, adapter["path"]).eval()
    adapter_tokens, adapter_logits = greedy(with_adapter, tokenizer)
    reloaded = AutoModelForCausalLM.from_pretrained(merged["path"]).eval()
    merged_tokens, merged_logits = greedy(reloaded, tokenizer)
    assert merged_tokens == adapter_tokens
    assert torch.allclose(merged_logits, adapter_logits, atol=1e-4)
    assert not torch.allclose(adapter_logits, base_logits, atol=1e-3)  # the adapter does change the model
    actions = [r["action"] for r in database.query("select action from audit_log")]
    assert actions.count("version.export") == 2
    assert "## Export" in (tmp_path / "out-merged" / "README.md").read_text()


def test_bad_exports_are_refused_and_write_nothing(settings, tiny_model_dir, tmp_path):
    database = Database(settings.db)
    add_adapter_version(database, tiny_model_dir, tmp_path / "v1", "v1")
    with pytest.raises(InvalidRequest, match="no adapter"):
        export_version(database, settings, "base", "adapter", tmp_path / "a", "boss")
    with pytest.raises(InvalidRequest, match="Unknown format"):
        export_version(database, settings, "v1", "onnx", tmp_path / "b", "boss")
    with pytest.raises(NotFound):
        export_version(database, settings, "v9", "merged", tmp_path / "c", "boss")
    with pytest.raises(InvalidRequest, match="No GGUF export"):  # the tiny model is not the bundled one
        export_version(database, settings, "v1", "gguf", tmp_path / "d", "boss")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(Conflict, match="not an empty folder"):
        export_version(database, settings, "v1", "merged", tmp_path / "full", "boss")
    assert not any((tmp_path / name).exists() for name in "abcd")
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]


def test_datasets_export_as_jsonl_and_parquet_that_load_dataset_reads(settings, seeded, tmp_path):
    from datasets import load_dataset

    made = export_datasets(seeded, settings, tmp_path / "data", "boss")
    assert made["rows"]["sft_train"] + made["rows"]["sft_validation"] == 31  # 30 imports + 1 approved correction
    for split, count in made["rows"].items():
        for kind in ("json", "parquet"):
            extension = "jsonl" if kind == "json" else "parquet"
            loaded = load_dataset(kind, data_files=str(tmp_path / "data" / f"{split}.{extension}"), split="train")
            assert len(loaded) == count
    sft = load_dataset("parquet", data_files=str(tmp_path / "data" / "sft_train.parquet"), split="train")
    assert set(sft.column_names) >= {"prompt", "completion"}
    everything = "".join(p.read_text() for p in (tmp_path / "data").glob("*.jsonl"))
    assert SECRET_EMAIL not in everything and SECRET_PHONE not in everything  # the PII gate ran
    assert "| sft_train |" in (tmp_path / "data" / "README.md").read_text()


def test_the_cli_exports_a_version(settings, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ASSISTANT_BASE_MODEL", str(tiny_model_dir))
    add_adapter_version(Database(settings.db), tiny_model_dir, tmp_path / "v1", "v1")
    run = [sys.executable, "-m", "training", "export", "v1", "--format", "adapter", "--out", str(tmp_path / "x")]
    done = subprocess.run(run, cwd=REPO, capture_output=True, text=True, env=os.environ.copy())
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["files"] == sorted(p.name for p in (tmp_path / "x").iterdir())
    again = subprocess.run(run, cwd=REPO, capture_output=True, text=True, env=os.environ.copy())
    assert again.returncode == 2 and "not an empty folder" in again.stderr


@pytest.mark.integration
def test_a_gguf_export_runs_in_llama_cpp_and_answers_like_the_version(bundled_model_dir, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp") if not os.environ.get("CI") else __import__("llama_cpp")
    from peft import PeftModel

    settings = Settings(home=REPO / ".hone", db=tmp_path / "feedback.db")  # the bundled model set-up made
    database = Database(settings.db)
    adapter = recipe_shaped_lora(bundled_model_dir, tmp_path / "adapter")
    register_adapter(database, "v1", adapter, "recipe-shaped")
    made = export_version(database, settings, "v1", "gguf", tmp_path / "gguf", "boss")
    assert made["files"] == ["README.md", "v1.gguf"]

    tokenizer = AutoTokenizer.from_pretrained(bundled_model_dir)
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(bundled_model_dir), str(adapter))
    expected, _ = greedy(reference.eval(), tokenizer, new_tokens=16)
    if tokenizer.eos_token_id in expected:  # the answer ends there; llama.cpp's text leaves the end token out
        expected = expected[: expected.index(tokenizer.eos_token_id)]
    llm = llama_cpp.Llama(str(tmp_path / "gguf" / "v1.gguf"), n_ctx=512, verbose=False)
    prompt = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    out = llm.create_completion(prompt, max_tokens=16, temperature=0.0)
    assert tokenizer(out["choices"][0]["text"], add_special_tokens=False)["input_ids"][:8] == expected[:8]


def test_an_admin_downloads_exports_from_the_admin_tab(tiny_server, tiny_model_dir, tmp_path):
    import zipfile

    from tests.conftest import ui_client

    add_adapter_version(tiny_server.hone.database, tiny_model_dir, tmp_path / "ui", "ui-export")
    tiny_server.add_user("export-admin", "admin")
    client = ui_client(tiny_server.url, "export-admin", "export-admin-password")
    downloaded = client.predict("ui-export", "adapter", api_name="/export_version")
    with zipfile.ZipFile(downloaded) as archive:
        assert {"adapter_model.safetensors", "adapter_config.json", "README.md"} <= set(archive.namelist())
    data = client.predict(api_name="/export_data")
    with zipfile.ZipFile(data) as archive:
        assert "README.md" in archive.namelist()
    with pytest.raises(Exception, match="no adapter"):
        client.predict("base", "adapter", api_name="/export_version")
