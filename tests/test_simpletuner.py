"""SimpleTuner import: each mapped key changes the setting it names (so the test fails if it were ignored),
ignored keys carry a reason, and bad input fails with the key named. No model is loaded here; the end-to-end
run of the quickstart example is tests/cli/test_simpletuner_run.py."""

import json
import re

import pytest

from lumina2_train.config import RunConfig
from lumina2_train.errors import ConfigError
from lumina2_train.simpletuner import import_simpletuner, options, outputs


@pytest.fixture
def st(tmp_path):
    """A folder laid out like a SimpleTuner checkout: local weights, a dataset folder and side files."""
    for d in ("weights/transformer", "weights/text_encoder", "weights/vae", "imgs", "clip", "gemma"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "lib.json").write_text(json.dumps({"cat": "a cat"}))
    (tmp_path / "init.safetensors").write_bytes(b"")
    (tmp_path / "lycoris.json").write_text(json.dumps({
        "algo": "lokr", "multiplier": 1.0, "linear_dim": 10000, "linear_alpha": 1, "factor": 16,
        "apply_preset": {"target_module": ["Attention", "FeedForward"], "module_algo_map": {"Attention": {"factor": 16}}}}))
    return tmp_path


def _import(root, config=None, entry=None, entries=None):
    base = {"model_family": "lumina2", "pretrained_model_name_or_path": "weights", "data_backend_config": "mdb.json"}
    dataset = {"id": "d", "type": "local", "instance_data_dir": "imgs", **(entry or {})}
    (root / "mdb.json").write_text(json.dumps(entries if entries is not None else [dataset]))
    (root / "config.json").write_text(json.dumps({**base, **(config or {})}))
    return import_simpletuner(root / "config.json", cwd=root)


def _get(cfg: RunConfig, dotted: str):
    value = cfg
    for part in re.findall(r"[^.\[\]]+", dotted):
        value = value[int(part)] if part.isdigit() else getattr(value, part)
    return value


# (key under test, config.json keys, dataset-entry keys, {our setting: expected value}); the defaults differ
CONFIG_CASES = [
    ("model_type", {"model_type": "full"}, {}, {"adapter.kind": "full"}),
    ("lora_rank", {"lora_rank": 8}, {}, {"adapter.rank": 8, "adapter.alpha": 8.0}),
    ("lora_alpha", {"lora_rank": 8, "lora_alpha": 4}, {}, {"adapter.alpha": 4.0}),
    ("lora_dropout", {"lora_dropout": 0.1}, {}, {"adapter.dropout": 0.1}),
    ("lora_init_type", {"lora_init_type": "gaussian"}, {}, {"adapter.init": "gaussian"}),
    ("use_dora", {"use_dora": True}, {}, {"adapter.use_dora": True}),
    ("init_lora", {"init_lora": "init.safetensors"}, {}, {"adapter.init_from": "{root}/init.safetensors"}),
    ("peft_lora_target_modules", {"peft_lora_target_modules": '["to_q", "to_v", "linear_1"]'}, {},
     {"adapter.targets": ("attention", "ffn")}),
    ("algo", {"lora_type": "lycoris", "lycoris_config": "lycoris.json", "lora_rank": 4}, {},
     {"adapter.kind": "lokr", "adapter.rank": 1024, "adapter.alpha": 1.0, "adapter.lokr_factor": 16,
      "adapter.targets": ("attention", "ffn")}),
    ("learning_rate", {"learning_rate": "5e-5"}, {}, {"train.lr": 5e-5}),
    ("lr_scheduler", {"lr_scheduler": "cosine"}, {}, {"train.scheduler": "cosine"}),
    ("lr_warmup_steps", {"lr_warmup_steps": 10}, {}, {"train.warmup_steps": 10}),
    ("lr_num_cycles", {"lr_num_cycles": 3}, {}, {"train.num_cycles": 3}),
    ("lr_power", {"lr_power": 2}, {}, {"train.power": 2.0}),
    ("lr_end", {"lr_scheduler": "polynomial", "learning_rate": 1e-4, "lr_end": 1e-5}, {},
     {"train.min_lr_ratio": pytest.approx(0.1)}),
    ("max_train_steps", {"max_train_steps": 123}, {}, {"train.steps": 123}),
    ("train_batch_size", {"train_batch_size": 3}, {}, {"train.batch_size": 3}),
    ("gradient_accumulation_steps", {"gradient_accumulation_steps": 4}, {}, {"train.grad_accum": 4}),
    ("max_grad_norm", {"max_grad_norm": 2.0}, {}, {"train.max_grad_norm": 2.0}),
    ("optimizer", {"optimizer": "optimi-stableadamw"}, {}, {"train.optimizer": "optimi-stableadamw"}),
    ("optimizer", {"optimizer": "adamw_bf16"}, {}, {"train.optimizer": "adamw_bf16"}),
    ("optimizer", {"optimizer": "prodigy"}, {}, {"train.optimizer": "prodigy"}),
    ("optimizer", {"optimizer": "optimi-lion"}, {}, {"train.optimizer": "lion"}),
    ("optimizer", {"optimizer": "adamw_schedulefree"}, {}, {"train.optimizer": "adamw_schedulefree"}),
    ("optimizer", {"optimizer": "adafactor"}, {}, {"train.optimizer": "adafactor"}),
    ("optimizer", {"optimizer": "bnb-adamw8bit"}, {}, {"train.optimizer": "adamw8bit"}),
    ("optimizer_config:weight_decay", {"optimizer_config": "weight_decay=0.01,eps=1e-6,d_coef=2"}, {},
     {"train.weight_decay": 0.01, "train.eps": 1e-6}),
    ("adam_beta1", {"adam_beta1": 0.8}, {}, {"train.betas": (0.8, 0.999)}),
    ("adam_beta2", {"adam_beta2": 0.95}, {}, {"train.betas": (0.9, 0.95)}),
    ("optimizer_beta1", {"optimizer_beta1": 0.85}, {}, {"train.betas": (0.85, 0.999)}),
    ("optimizer_beta2", {"optimizer_beta2": 0.99}, {}, {"train.betas": (0.9, 0.99)}),
    ("adam_weight_decay", {"adam_weight_decay": 0.02}, {}, {"train.weight_decay": 0.02}),
    ("adam_epsilon", {"adam_epsilon": 1e-6}, {}, {"train.eps": 1e-6}),
    ("seed", {"seed": 7}, {}, {"train.seed": 7, "data.seed": 7}),
    ("mixed_precision", {"mixed_precision": "no"}, {}, {"train.precision": "fp32", "model.dtype": "fp32"}),
    ("gradient_checkpointing", {"gradient_checkpointing": "false"}, {}, {"train.checkpointing": "off"}),
    ("caption_dropout_probability", {"caption_dropout_probability": 0.1}, {}, {"train.caption_dropout": 0.1}),
    ("snr_gamma", {"snr_gamma": 3}, {}, {"train.loss_weighting": "min_snr", "train.min_snr_gamma": 3.0}),
    ("use_ema", {"use_ema": "true"}, {}, {"train.use_ema": True}),
    ("ema_decay", {"ema_decay": 0.99}, {}, {"train.ema_decay": 0.99}),
    ("ema_update_interval", {"ema_update_interval": 10}, {}, {"train.ema_every_n_steps": 10}),
    ("ema_device", {"ema_device": "cpu"}, {}, {"train.ema_on_cpu": True}),
    ("ema_cpu_only", {"ema_cpu_only": True}, {}, {"train.ema_on_cpu": True}),
    ("ema_validation", {"ema_validation": "ema_only"}, {}, {"validation.use_ema": True}),
    ("flow_schedule_auto_shift", {"flow_schedule_auto_shift": True, "flow_schedule_shift": 6}, {},
     {"train.shift_mode": "resolution"}),
    ("flow_schedule_shift", {"flow_schedule_shift": 6}, {}, {"train.shift_mode": "static", "train.static_shift": 6.0}),
    ("flow_schedule_shift", {"flow_schedule_shift": 0}, {}, {"train.shift_mode": "none"}),
    ("flow_use_uniform_schedule", {"flow_use_uniform_schedule": True}, {}, {"train.timestep_sampling": "uniform"}),
    ("flow_sigmoid_scale", {"flow_sigmoid_scale": 1.5}, {}, {"train.logit_std": 1.5}),
    ("base_model_precision", {"base_model_precision": "int8-quanto"}, {}, {"model.base_precision": "int8"}),
    ("base_model_precision", {"base_model_precision": "fp8-torchao"}, {}, {"model.base_precision": "fp8-torchao"}),
    ("quantize_via", {"quantize_via": "cpu"}, {}, {"model.quantize_via": "cpu"}),
    ("pretrained_model_name_or_path", {}, {}, {"model.transformer": "{root}/weights", "model.vae": "{root}/weights"}),
    ("pretrained_transformer_model_name_or_path", {"pretrained_transformer_model_name_or_path": "weights",
                                                   "pretrained_transformer_subfolder": "transformer"}, {},
     {"model.transformer": "{root}/weights/transformer", "model.text_encoder": "{root}/weights"}),
    ("pretrained_gemma_model_name_or_path", {"pretrained_gemma_model_name_or_path": "gemma"}, {},
     {"model.text_encoder": "{root}/gemma"}),
    ("pretrained_vae_model_name_or_path", {"pretrained_vae_model_name_or_path": "weights/vae"}, {},
     {"model.vae": "{root}/weights/vae"}),
    ("validation_prompt", {"validation_prompt": "a cat"}, {}, {"validation.prompts": ("a cat",)}),
    ("validation_disable", {"validation_prompt": "a cat", "validation_disable": True}, {}, {"validation.prompts": ()}),
    ("validation_negative_prompt", {"validation_negative_prompt": "ugly"}, {}, {"validation.negative_prompt": "ugly"}),
    ("validation_guidance", {"validation_guidance": 5.5}, {}, {"validation.guidance": 5.5}),
    ("validation_guidance_rescale", {"validation_guidance_rescale": 0.7}, {}, {"validation.guidance_rescale": 0.7}),
    ("validation_num_inference_steps", {"validation_num_inference_steps": "12"}, {}, {"validation.steps": 12}),
    ("validation_resolution", {"validation_resolution": "512x768"}, {},
     {"validation.width": 512, "validation.height": 768}),
    ("validation_resolution", {"validation_resolution": 0.25}, {}, {"validation.width": 496}),
    ("validation_seed", {"validation_seed": 3}, {}, {"validation.seed": 3}),
    ("validation_step_interval", {"validation_step_interval": 25}, {}, {"validation.every_n_steps": 25}),
    ("validation_steps", {"validation_steps": 30}, {}, {"validation.every_n_steps": 30}),
    ("validation_disable_unconditional", {"validation_disable_unconditional": True}, {},
     {"validation.disable_unconditional": True}),
    ("user_prompt_library", {"user_prompt_library": "lib.json"}, {}, {"validation.prompt_library": "{root}/lib.json"}),
    ("evaluation_type", {"evaluation_type": "clip", "pretrained_evaluation_model_name_or_path": "clip"}, {},
     {"validation.evaluation_type": "clip", "validation.clip_model": "{root}/clip"}),
    ("output_dir", {"output_dir": "out/runs"}, {}, {"save.output_dir": "{root}/out/runs"}),
    ("checkpointing_steps", {"checkpointing_steps": 25}, {}, {"save.every_n_steps": 25}),
    ("checkpoint_step_interval", {"checkpoint_step_interval": 20}, {}, {"save.every_n_steps": 20}),
    ("checkpoints_total_limit", {"checkpoints_total_limit": 3}, {}, {"save.keep_last": 3}),
    ("resume_from_checkpoint", {"output_dir": "out", "hub_model_id": "me/run",
                                "resume_from_checkpoint": "run/checkpoints/step_00000004"}, {},
     {"resume_from": "{root}/out/run/checkpoints/step_00000004"}),
    ("lora_format", {"lora_format": "diffusers"}, {}, {"save.format": "diffusers"}),
    ("push_to_hub", {"push_to_hub": True, "hub_model_id": "me/x"}, {}, {"hub.push": True}),
    ("hub_model_id", {"hub_model_id": "me/x"}, {}, {"hub.model_id": "me/x", "save.name": "x"}),
    ("push_checkpoints_to_hub", {"push_checkpoints_to_hub": True}, {}, {"hub.push_checkpoints": True}),
    ("model_card_private", {"model_card_private": True}, {}, {"hub.private": True}),
    ("report_to", {"report_to": "tensorboard"}, {}, {"tracking.report_to": ("tensorboard",)}),
    ("report_to", {"report_to": "all"}, {}, {"tracking.report_to": ("tensorboard", "wandb")}),
    ("tracker_project_name", {"tracker_project_name": "p"}, {}, {"tracking.project": "p"}),
    ("tracker_run_name", {"tracker_run_name": "r"}, {}, {"tracking.run_name": "r"}),
    ("logging_dir", {"logging_dir": "tb"}, {}, {"tracking.log_dir": "{root}/tb"}),
    ("vae_batch_size", {"vae_batch_size": 2}, {}, {"cache.vae_batch_size": 2}),
    ("text_encoder_batch_size", {"text_encoder_batch_size": 8}, {}, {"cache.encode_batch_size": 8}),
    ("tokenizer_max_length", {"tokenizer_max_length": 128}, {}, {"cache.max_caption_tokens": 128}),
    ("vae_cache_disable", {"vae_cache_disable": True}, {}, {"cache.vae_cache_disable": True}),
    ("cache_dir_text", {"cache_dir_text": "cache/text"}, {}, {"cache.dir": "{root}/cache/text"}),
    # global dataset defaults in config.json
    ("resolution", {"resolution": 512}, {}, {"data.datasets[0].resolution": 512}),
    ("caption_strategy", {"caption_strategy": "filename"}, {}, {"data.datasets[0].caption_strategy": "filename"}),
    ("cache_dir_vae", {"cache_dir_vae": "cache/vae"}, {}, {"cache.dir": "{root}/cache/vae"}),
]

ENTRY_CASES = [
    ("instance_data_dir", {}, {}, {"data.datasets[0].path": "{root}/imgs"}),
    ("caption_strategy", {}, {"caption_strategy": "filename"}, {"data.datasets[0].caption_strategy": "filename"}),
    ("caption_strategy", {}, {"caption_strategy": "instanceprompt", "instance_prompt": "sks"},
     {"data.datasets[0].caption_strategy": "instance", "data.datasets[0].instance_prompt": "sks"}),
    ("only_instance_prompt", {}, {"only_instance_prompt": True, "instance_prompt": "sks"},
     {"data.datasets[0].caption_strategy": "instance"}),
    ("parquet", {}, {"caption_strategy": "parquet", "metadata_backend": "parquet",
                     "parquet": {"path": "imgs/meta.jsonl", "filename_column": "file_name", "caption_column": "caption"}},
     {"data.datasets[0].caption_strategy": "jsonl", "data.datasets[0].metadata_file": "{root}/imgs/meta.jsonl"}),
    ("resolution_type", {}, {"resolution": 512, "resolution_type": "pixel"},
     {"data.datasets[0].resolution_type": "shortest_side", "data.datasets[0].resolution": 512}),
    ("resolution", {}, {"resolution": 0.5, "resolution_type": "area"}, {"data.datasets[0].resolution": 707}),
    ("minimum_image_size", {}, {"minimum_image_size": 300}, {"data.datasets[0].min_size_px": 300}),
    ("maximum_image_size", {}, {"maximum_image_size": 1500}, {"data.datasets[0].max_size_px": 1500}),
    ("target_downsample_size", {}, {"target_downsample_size": 1200}, {"data.datasets[0].target_downsample_px": 1200}),
    ("crop", {}, {"crop": True}, {"data.datasets[0].crop_style": "random"}),
    ("crop", {}, {}, {"data.datasets[0].crop_style": "none"}),  # SimpleTuner's default: no crop
    ("crop_style", {}, {"crop": True, "crop_style": "center"}, {"data.datasets[0].crop_style": "center"}),
    ("crop_aspect", {}, {"crop": True, "crop_aspect": "preserve"}, {"data.datasets[0].crop_aspect": "preserve"}),
    ("repeats", {}, {"repeats": 2}, {"data.datasets[0].repeats": 3}),
    ("is_regularisation_data", {}, {"is_regularisation_data": True}, {"data.datasets[0].is_regularisation": True}),
    ("is_regularization_data", {}, {"is_regularization_data": True}, {"data.datasets[0].is_regularisation": True}),
    ("maximum_aspect_ratio", {}, {"maximum_aspect_ratio": 3.0, "minimum_aspect_ratio": 0.5},
     {"data.datasets[0].max_aspect_ratio": 3.0}),
    ("aspect_bucket_alignment", {}, {"aspect_bucket_alignment": 64}, {"data.datasets[0].bucket_step_px": 64}),
    ("cache_dir_vae", {}, {"cache_dir_vae": "cache/vae/{model_family}"}, {"cache.dir": "{root}/cache/vae/lumina2"}),
    ("vae_cache_disable", {}, {"vae_cache_disable": True}, {"cache.vae_cache_disable": True}),
    ("caption_shuffle", {}, {"caption_shuffle": {"enable": True, "position_start": 1}},
     {"data.datasets[0].shuffle_tags": True, "data.datasets[0].keep_tags": 1}),
]


DROP = {"algo": "lycoris_config"}  # the key to remove to see the mapping vanish, when not the key itself


@pytest.mark.parametrize("key, config, entry, expected", CONFIG_CASES + ENTRY_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CONFIG_CASES + ENTRY_CASES)])
def test_each_key_changes_the_setting_it_maps_to(st, key, config, entry, expected):
    cfg, report = _import(st, config, entry)
    for dotted, want in expected.items():
        want = want.replace("{root}", str(st)) if isinstance(want, str) else want
        assert _get(cfg, dotted) == want, dotted
    assert report.find(key).status == "mapped", report.find(key)
    # the same files without the key: some expected setting must come out different (or the import fails)
    drop = DROP.get(key, key.split(":")[0])
    if drop not in config and drop not in entry:
        return  # the case tests a SimpleTuner default (the key is absent on purpose)
    try:
        without, _ = _import(st, {k: v for k, v in config.items() if k != drop},
                             {k: v for k, v in entry.items() if k != drop})
    except ConfigError:
        return
    assert any(_differs(without, cfg, d) for d in expected), f"ignoring {drop} would change nothing"


def _differs(a: RunConfig, b: RunConfig, dotted: str) -> bool:
    try:
        return _get(a, dotted) != _get(b, dotted)
    except IndexError:  # the dataset itself is gone
        return True


# keys that are read but set nothing of ours with these values: (config.json keys, key, status)
NOT_MAPPED = [
    ({"model_family": "lumina2"}, "model_family", "used"),
    ({"grad_clip_method": "norm"}, "grad_clip_method", "used"),
    ({"grad_clip_method": "value"}, "grad_clip_method", "ignored"),
    ({"validation_noise_scheduler": "euler"}, "validation_noise_scheduler", "used"),
    ({"validation_noise_scheduler": "ddim"}, "validation_noise_scheduler", "ignored"),
    ({"validation_prompt_library": True}, "validation_prompt_library", "ignored"),
    ({"eval_steps_interval": 50}, "eval_steps_interval", "ignored"),
    ({"flow_use_beta_schedule": True}, "flow_use_beta_schedule", "ignored"),
    ({"evaluation_type": "clip"}, "evaluation_type", "ignored"),  # no local CLIP folder given
    ({"lora_type": "lycoris", "lycoris_config": "lycoris.json", "lora_rank": 4}, "lora_rank", "ignored"),
    ({"resume_from_checkpoint": "latest"}, "resume_from_checkpoint", "used"),  # no earlier run: starts fresh
]


@pytest.mark.parametrize("config, key, status", NOT_MAPPED, ids=[f"{c[1]}-{c[2]}" for c in NOT_MAPPED])
def test_keys_that_set_nothing_are_reported(st, config, key, status):
    _, report = _import(st, config)
    assert report.find(key).status == status and report.find(key).note


def test_every_config_handler_has_a_case():
    tested = {k for c in CONFIG_CASES for k in [c[0], *c[1]]} | {c[1] for c in NOT_MAPPED}
    handled = set(options.HANDLERS) | set(outputs.HANDLERS)
    assert handled - tested == set()


def test_text_embeds_entry_sets_the_cache_and_its_batch_size(st):
    entries = [{"id": "d", "type": "local", "instance_data_dir": "imgs"},
               {"id": "te", "type": "local", "dataset_type": "text_embeds", "default": True,
                "cache_dir": "cache/text/{model_family}", "text_encoder_batch_size": 16, "write_batch_size": 128}]
    cfg, report = _import(st, entries=entries)
    assert cfg.cache.dir == str(st / "cache/text/lumina2") and cfg.cache.encode_batch_size == 16
    assert report.find("cache_dir").status == "mapped" and report.find("write_batch_size").status == "ignored"


def test_entries_that_cannot_be_read_here_are_left_out_with_a_reason(st):
    entries = [{"id": "ok", "type": "local", "instance_data_dir": "imgs"},
               {"id": "off", "type": "local", "instance_data_dir": "imgs", "disabled": True},
               {"id": "s3", "type": "aws", "aws_bucket_name": "b"},
               {"id": "vid", "type": "local", "dataset_type": "video", "instance_data_dir": "imgs"},
               {"id": "pq", "type": "local", "instance_data_dir": "imgs", "caption_strategy": "parquet",
                "parquet": {"path": "meta.parquet"}}]
    cfg, report = _import(st, entries=entries)
    assert [d.path for d in cfg.data.datasets] == [str(st / "imgs")]
    assert "disabled" in report.find("instance_data_dir", "mdb.json[off]").note
    assert "local folders only" in report.find("aws_bucket_name", "mdb.json[s3]").note
    assert "dataset_type 'video'" in report.find("dataset_type", "mdb.json[vid]").note
    assert "parquet files are not read here" in report.find("caption_strategy", "mdb.json[pq]").note


def test_ignored_keys_say_why(st):
    config = {"disable_bucket_pruning": True, "crepa_enabled": True, "attention_mechanism": "sageattention",
              "optimizer": "soap", "lr_scheduler": "sine", "some_future_key": 1, "flow_use_beta_schedule": True}
    _, report = _import(st, config, {"vae_cache_clear_each_epoch": True, "probability": 0.5})
    for key in [*config, "vae_cache_clear_each_epoch", "probability"]:
        entry = report.find(key)
        assert entry.status == "ignored" and len(entry.note) > 10, entry
    assert report.find("some_future_key").note == "no equivalent in this trainer"
    text = report.as_text()
    assert text.startswith("SimpleTuner import: ") and "ignored crepa_enabled = True" in text


def test_epochs_are_converted_with_the_dataset_size(st):
    from lumina2_train.demo import write_demo_dataset

    write_demo_dataset(st / "imgs")  # 8 images; crop_aspect square puts them in one bucket
    entry = {"crop": True, "crop_aspect": "square", "resolution": 64, "minimum_image_size": 32, "repeats": 1}
    cfg, report = _import(st, {"num_train_epochs": 2, "max_train_steps": 0, "train_batch_size": 4}, entry)
    assert cfg.train.steps == 8  # 2 epochs × (8 images × 2 passes / batch 4)
    assert report.find("num_train_epochs").status == "mapped"
    assert report.find("max_train_steps").status == "used"


def test_dashed_keys_string_values_and_env_placeholders(st, monkeypatch):
    monkeypatch.setenv("ST_OUT", "from_env")
    cfg, _ = _import(st, {"--learning_rate": "2e-4", "--use_ema": "true", "--output_dir": "{env:ST_OUT}/x"})
    assert cfg.train.lr == 2e-4 and cfg.train.use_ema and cfg.save.output_dir == str(st / "from_env/x")


@pytest.mark.parametrize("config, message", [
    ({"model_family": "flux"}, "model_family is 'flux', but this trainer trains Lumina-Image-2.0 only"),
    ({"pretrained_model_name_or_path": "Alpha-VLLM/Lumina-Image-2.0"},
     "pretrained_model_name_or_path 'Alpha-VLLM/Lumina-Image-2.0' is not a local path"),
    ({"learning_rate": "fast"}, "learning_rate must be a number (got 'fast')"),
    ({"data_backend_config": "nope.json"}, "nope.json: no such file"),
    ({"output_dir": "{env:ST_UNSET_VARIABLE}"}, "ST_UNSET_VARIABLE is not set"),
])
def test_bad_input_names_the_key(st, config, message, monkeypatch):
    monkeypatch.delenv("ST_UNSET_VARIABLE", raising=False)
    with pytest.raises(ConfigError, match=re.escape(message)):
        _import(st, config)
