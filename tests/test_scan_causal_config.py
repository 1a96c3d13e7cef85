"""configs/scan_causal.yaml runs every analysis on the SCAN model: the shipped config, only smaller and sooner."""
import json
from pathlib import Path

import yaml

from lit_grok.cli import main

CONFIGS = Path(__file__).parents[1] / "configs"
SMALL = ["--model.init_args.d_model=32", "--model.init_args.d_ff=64", "--data.init_args.n_train=64",
         "--data.init_args.n_test_eval=40", "--data.init_args.batch_size=16", "--data.init_args.eval_batch_size=20",
         "--trainer.max_steps=3", "--trainer.val_check_interval=3", "--trainer.enable_progress_bar=false",
         "--trainer.enable_model_summary=false"]


def scheduled_at_step_2(config: dict) -> dict:
    for cb in config["callbacks"].values():
        args = cb.setdefault("init_args", {})
        if "steps" in args:
            args["steps"] = [2]
        if "n_trials" in args:
            args["n_trials"] = 2
    return config


def test_scan_causal_config_runs_every_analysis(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "scan_causal_small.yaml"
    causal = yaml.safe_load((CONFIGS / "scan_causal.yaml").read_text())
    config.write_text(yaml.safe_dump(scheduled_at_step_2(causal), sort_keys=False))
    # two rows by step 2: v1, v2 exist, v3, v4 do not
    main(["fit", "--config", str(CONFIGS / "scan.yaml"), "--config", str(config), "--callbacks.recorder.interval=1", *SMALL])
    run = tmp_path / "logs" / "scan_causal" / "version_0"

    ablation = json.loads((run / "ablation.json").read_text())
    assert ablation["matched_set"] == "edge"
    (at_2,) = ablation["results"]
    assert at_2["step"] == 2 and at_2["base"]["task_metric"] == "seq_acc"
    assert at_2["sets"]["edge"]["status"] == "ok" and at_2["sets"]["edge"]["removed_norm"] > 0
    assert at_2["sets"]["bulk"]["status"] == "unavailable"  # a 2-row window has no v3, v4

    probes = json.loads((run / "probes_token.json").read_text())["results"]
    assert {(r["module"], r["probe"], r["metric"]) for r in probes} == {("dec_2", "linear", "acc"), ("dec_2", "mlp", "acc")}

    encoder, decoder = (json.loads((run / name).read_text())["results"][0]
                        for name in ("fourier_attention.json", "fourier_attention_1.json"))
    assert len(encoder["fourier"]["enc_2"]["power"]) == 11 // 2 + 1  # along the source axis (S = 11)
    assert len(decoder["fourier"]["dec_2"]["power"]) == 50 // 2 + 1  # along the target axis (T = 50)
    assert set(encoder["attention"]) == {"enc_self_0", "enc_self_1", "enc_self_2"}
    assert decoder["attention"]["dec_self_0"]["causal"] is True
    assert decoder["attention"]["cross_0"]["causal"] is False and encoder["attention"]["enc_self_0"]["causal"] is False
    v1 = decoder["edge"]["v1"]  # the response field of v1 by gold action token
    assert v1["status"] == "ok" and 0 <= v1["func_acc"] <= 1
