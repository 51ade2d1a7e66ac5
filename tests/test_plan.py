"""``e2v plan``: the estimate against measured CPU training steps (torch profiler allocation trace), and the 14B
recipes' numbers in a sane range."""

import contextlib
from pathlib import Path

import pytest
import torch
import yaml

from e2v.cli import main
from e2v.lora import LoRAConfig, apply_lora
from e2v.modules.dit import WanDiT
from e2v.plan import GB, estimate, traced_peak

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
ACTIVATION_TOLERANCE = 0.15  # estimated activations within 15 % of the measured peak


def write_recipe(tmp_path, precision="32-true", checkpointing=False, lora=None, optimizer="torch.optim.AdamW"):
    recipe = {
        "trainer": {"accelerator": "cpu", "devices": 1, "precision": precision},
        "model": {"class_path": "e2v.tasks.e2v_diffusion.E2VDiffusion", "init_args": {
            "dit": {"name": "wan", "preset": "tiny", "num_attention_heads": 6, "attention_head_dim": 32,
                    "ffn_dim": 768, "num_layers": 3, "added_kv_proj_dim": 192,
                    "gradient_checkpointing": checkpointing},
            "text_encoder": {"name": "umt5", "max_length": 24},
            "lora": lora,
            "optimizer": {"class_path": optimizer, "init_args": {"lr": 1e-3}}}},
        "data": {"class_path": "e2v.datamodules.triplets.TripletDataModule", "init_args": {
            "buckets": [[9, 96, 96], [17, 128, 128]], "max_references": 2, "batch_size": 1}},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def measure(plan, lora=None, optimizer=torch.optim.AdamW, precision="32-true"):
    """Build the planned DiT for real and train it on inputs of the planned shapes; returns the measured activation
    peak (a forward + backward traced once the gradient buffers exist, so it holds what the activations add), the
    gradient bytes and the optimizer state bytes."""
    torch.manual_seed(0)
    dit = WanDiT.from_preset("tiny", num_attention_heads=6, attention_head_dim=32, ffn_dim=768, num_layers=3,
                             added_kv_proj_dim=192)
    dit.set_gradient_checkpointing(plan.checkpointing)
    if lora:
        apply_lora(dit, LoRAConfig.from_options(lora))
    s = plan.shapes
    latents = torch.randn(1, 36, (s.frames - 1) // 4 + 1, s.height // 8, s.width // 8)
    text = torch.randn(1, s.text_tokens, dit.config.text_dim)
    image = torch.randn(1, plan.context_tokens - s.text_tokens, dit.config.image_dim)
    params = [p for p in dit.parameters() if p.requires_grad]
    opt = optimizer(params, lr=1e-3)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16-mixed" else contextlib.nullcontext()

    def forward_backward():
        with autocast:
            out = dit(latents, torch.tensor([500.0]), text, image)
        out.float().pow(2).mean().backward()

    forward_backward()
    opt.step()  # the optimizer state and the gradient buffers exist from here on
    opt.zero_grad(set_to_none=False)
    peak = traced_peak(forward_backward)
    gradients = sum(p.grad.numel() * p.grad.element_size() for p in params)
    state = sum(t.numel() * t.element_size() for st in opt.state.values() for t in st.values()
                if isinstance(t, torch.Tensor))
    return peak, gradients, state


@pytest.mark.parametrize("precision, checkpointing", [("32-true", False), ("32-true", True), ("bf16-mixed", False),
                                                      ("bf16-mixed", True)])
def test_full_finetuning_estimate_matches_measured_cpu_step(tmp_path, precision, checkpointing):
    plan = estimate([write_recipe(tmp_path, precision, checkpointing)])
    assert plan.checkpointing == checkpointing
    assert plan.tokens == 5 * 8 * 8 and plan.shapes.frames == 17  # the largest bucket: 17 x 128 x 128
    peak, gradients, state = measure(plan, precision=precision)
    assert plan.gradients == gradients and plan.optimizer == state  # exact: fp32 parameters, AdamW moments
    assert abs(plan.activations - peak) <= ACTIVATION_TOLERANCE * peak, (plan.activations, peak)


@pytest.mark.parametrize("targets, optimizer", [("image_kv", "torch.optim.AdamW"),
                                                ("attention", "e2v.tasks.optim_8bit.AdamW8bit")])
def test_lora_estimate_matches_measured_cpu_step(tmp_path, targets, optimizer):
    from e2v.tasks.optim_8bit import AdamW8bit

    lora = {"rank": 4, "targets": targets}
    plan = estimate([write_recipe(tmp_path, lora=lora, optimizer=optimizer)])
    peak, gradients, state = measure(plan, lora=lora, optimizer=AdamW8bit if "8bit" in optimizer else torch.optim.AdamW)
    assert plan.gradients == gradients
    assert abs(plan.optimizer - state) <= 0.01 * state  # 8-bit: quantile maps and block scales approximated
    # LoRA activations: the full fine-tuning count, an upper bound the plan says it is (frozen linears save less)
    assert peak <= plan.activations <= 2.1 * peak, (plan.activations, peak)
    assert any("upper bound" in note for note in plan.notes)


def test_14b_recipes_are_in_a_sane_range(capsys):
    full = estimate([RECIPES / "a2-14b.yaml"], gpus=8)
    # Wan2.1-I2V-14B: 14B in the name, 16.4B with the image branch (add_k/v projections, image embedder)
    assert 14e9 < full.parameters < 17e9 and full.trainable == full.parameters
    assert full.strategy == "fsdp2" and full.gpus == 8 and full.tokens == 21 * 30 * 52  # 81 x 480 x 832
    # AdamW: 2 fp32 moments (+ a step counter per tensor), sharded over 8 GPUs
    assert full.optimizer * 8 == pytest.approx(2 * 4 * full.parameters, rel=1e-6)
    assert 20 * GB < full.total < 80 * GB
    lora = estimate([RECIPES / "a2-14b-lora.yaml"])
    assert lora.strategy == "single" and lora.gpus == 1 and lora.parameters == full.parameters
    assert lora.trainable == 64 * 40 * 10 * (5120 + 5120)  # rank 64 on 10 attention projections per block
    assert 30 * GB < lora.weights < 36 * GB  # frozen bf16 base (fp32 islands)
    assert lora.total < 80 * GB  # what the recipe promises: one 80 GB GPU
    assert main(["plan", "--config", str(RECIPES / "a2-14b-lora.yaml")]) == 0
    out = capsys.readouterr().out
    assert "strategy single over 1 GPU(s), precision bf16-mixed, activation checkpointing on" in out


def test_bad_recipe_is_a_clear_error(tmp_path, capsys):
    assert main(["plan", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "recipe" in capsys.readouterr().err
    path = tmp_path / "bad.yaml"
    path.write_text("trainer: {precision: 8-bit}\n")
    assert main(["plan", "--config", str(path)]) == 2
    assert "trainer.precision '8-bit'" in capsys.readouterr().err


def test_distillation_recipe_plan():
    lora = estimate([RECIPES / "a2-14b-lora.yaml"])
    distill = estimate([RECIPES / "a2-14b-distill-lora.yaml"])
    # the teacher is the LoRA student's own base (adapters off): no second 14B copy, the same adapters
    assert distill.weights == pytest.approx(lora.weights) and distill.trainable == lora.trainable
    assert distill.activations == pytest.approx(lora.activations)  # steps_per_batch: 1
    assert any("no copy" in note for note in distill.notes)
    assert distill.total < 80 * GB  # what the recipe promises: one 80 GB GPU
