"""`TrajectoryPictureCallback`: the denoising trajectory of a training rollout, drawn at every logging step."""

import os

from transformers import TrainerCallback
from transformers.integrations import TensorBoardCallback

from ..rollout.visualize import draw_trajectory


__all__ = ["TrajectoryPictureCallback"]


class TrajectoryPictureCallback(TrainerCallback):
    """Draws the last training rollout's trajectory (its first row, with the rewards of its rewarded steps) whenever
    the trainer logs during training: saved as `<output_dir>/trajectories/step_NNNNN.png` and sent to the trackers of
    `report_to` (wandb, trackio, tensorboard), as TRL's `LogCompletionsCallback` sends completion tables.

    Added by [`DiffusionGRPOTrainer`] when `log_trajectory_pictures=True`; it reads the trainer's
    `_last_trajectory` (`(trajectory, prompts, {step: reward})`, set by each training rollout) and clears it, so a
    rollout is drawn once.

    Args:
        trainer ([`DiffusionGRPOTrainer`]): The trainer whose rollouts are drawn.
    """

    def __init__(self, trainer):
        self.trainer = trainer

    def on_log(self, args, state, control, **kwargs):
        trainer = self.trainer
        if not state.is_world_process_zero or trainer._last_trajectory is None or not trainer.model.training:
            return
        trajectory, prompts, rewards = trainer._last_trajectory
        trainer._last_trajectory = None
        picture = draw_trajectory(
            trajectory,
            trainer.processor,
            index=0,
            prompt=prompts[0],
            grey_unknown=args.grey_unrevealed,
            rewards=rewards,
        )
        folder = os.path.join(args.output_dir, "trajectories")
        os.makedirs(folder, exist_ok=True)
        picture.save(os.path.join(folder, f"step_{state.global_step:05d}.png"))
        report_to = args.report_to or []
        if "wandb" in report_to:
            import wandb

            if wandb.run is not None:
                wandb.log({"trajectory": wandb.Image(picture)}, commit=False)
        if "trackio" in report_to:
            import trackio

            trackio.log({"trajectory": trackio.Image(picture)})
        if "tensorboard" in report_to:
            import numpy as np

            for callback in trainer.callback_handler.callbacks:
                if isinstance(callback, TensorBoardCallback) and callback.tb_writer is not None:
                    image = np.asarray(picture.convert("RGB"))
                    callback.tb_writer.add_image("trajectory", image, state.global_step, dataformats="HWC")
