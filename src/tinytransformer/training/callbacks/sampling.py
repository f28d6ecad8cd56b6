"""Periodic sample generation: printed, written to TensorBoard's TEXT tab, scored, optionally a stop rule."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from tinytransformer.data.batches import mix_seed
from tinytransformer.data.quality import SampleScorer
from tinytransformer.model.generation import generate
from tinytransformer.training.callbacks.steps import OptimizerStepCallback


class SampleGeneration(OptimizerStepCallback):
    """Every `every_n_steps` optimizer steps, sample `max_new_tokens` after `prompt` and log it.

    The sample's quality (`sample/word_share`, and `sample/sentence_share` on the built-in corpus) is
    logged; with `stop_at_quality`, training stops once it is reached. Sampling uses its own generator, so
    it never changes the training run's random stream.
    """

    def __init__(
        self,
        every_n_steps: int = 500,
        prompt: str = "The cat",
        max_new_tokens: int = 200,
        temperature: float = 0.8,
        top_k: int | None = None,
        stop_at_quality: float | None = None,
    ):
        self.every_n_steps, self.prompt, self.max_new_tokens = every_n_steps, prompt, max_new_tokens
        self.temperature, self.top_k, self.stop_at_quality = temperature, top_k, stop_at_quality
        self.scorer: SampleScorer | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        dm = trainer.datamodule
        self.scorer = SampleScorer(dm.corpus.text, grammar_known=dm.corpus.entropy_floor_bpc is not None)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps <= 0 or step % self.every_n_steps or not self.optimizer_stepped(trainer):
            return
        scores = {}
        if trainer.is_global_zero:
            text = self.sample(trainer, pl_module, step)
            scores = self.scorer.score(text[len(self.prompt) :])
            rank_zero_info(f"\n[sample @ step {step}] {text!r}")
            if trainer.logger is not None:
                trainer.logger.log_metrics({f"sample/{k}": v for k, v in scores.items()}, step=step)
                experiment = getattr(trainer.logger, "experiment", None)
                if hasattr(experiment, "add_text"):
                    # A code block keeps whitespace; TensorBoard's markdown would collapse it.
                    experiment.add_text("samples", f"```\n{text}\n```", global_step=step)
        if self.stop_at_quality is not None:
            reached = trainer.strategy.broadcast(
                scores.get(self.scorer.quality_key, 0.0) >= self.stop_at_quality
            )
            if reached:
                pl_module.stop("sample_quality")

    def sample(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> str:
        tokenizer = trainer.datamodule.tokenizer
        prompt_ids = tokenizer.encode(self.prompt) or [0]
        idx = torch.tensor([prompt_ids], device=pl_module.device)
        generator = torch.Generator(pl_module.device).manual_seed(mix_seed(pl_module.hparams.seed, step, 2))
        block_size = pl_module.hparams.model["block_size"]
        out = generate(
            pl_module.model,
            idx,
            self.max_new_tokens,
            self.temperature,
            self.top_k,
            generator=generator,
            block_size=block_size,
        )
        return tokenizer.decode(out[0].tolist())
