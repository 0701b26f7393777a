"""A small rule-based reward on the reasoning text: length and format."""

from .base import Reward, RewardStates


__all__ = ["ReasoningFormatReward"]


class ReasoningFormatReward(Reward):
    """Rewards a reasoning of sensible length that ends like a finished sentence.

    Score per state, in [0, 1]: `length_weight * [min_words <= words <= max_words] + (1 - length_weight) *
    [text ends with one of end_marks]`, where `words` is the number of whitespace-separated words of the partial
    text. An empty text scores 0.

    Intermediate states have a partial text (unrevealed tokens dropped), which is usually short and unfinished, so
    this reward naturally grows along the trajectory. With `final_step_only=True` it returns `None` (not applicable)
    for every state before the last step, i.e. it only judges the finished reasoning.

    Args:
        min_words (`int`, defaults to `5`): Shortest reasoning rewarded for length.
        max_words (`int`, defaults to `60`): Longest reasoning rewarded for length.
        end_marks (`str`, defaults to `"."`): Characters that count as a finished last sentence.
        length_weight (`float`, defaults to `0.5`): Share of the length criterion; the rest is the format criterion.
        final_step_only (`bool`, defaults to `False`): Score only states at the last denoising step.
    """

    def __init__(
        self,
        min_words: int = 5,
        max_words: int = 60,
        end_marks: str = ".",
        length_weight: float = 0.5,
        final_step_only: bool = False,
    ):
        if not 0 <= min_words <= max_words:
            raise ValueError(f"need 0 <= min_words <= max_words, got min_words={min_words}, max_words={max_words}.")
        if not 0.0 <= length_weight <= 1.0:
            raise ValueError(f"length_weight must lie in [0, 1], got {length_weight}.")
        if not end_marks:
            raise ValueError("end_marks must name at least one character.")
        self.min_words = min_words
        self.max_words = max_words
        self.end_marks = end_marks
        self.length_weight = length_weight
        self.final_step_only = final_step_only

    def score(self, states: RewardStates) -> list[float | None]:
        final = (states.steps == states.num_steps - 1).tolist()
        scores: list[float | None] = []
        for text, is_final in zip(states.texts, final):
            if self.final_step_only and not is_final:
                scores.append(None)
                continue
            text = text.strip()
            if not text:
                scores.append(0.0)
                continue
            length_ok = self.min_words <= len(text.split()) <= self.max_words
            ends_ok = text[-1] in self.end_marks
            scores.append(self.length_weight * length_ok + (1.0 - self.length_weight) * ends_ok)
        return scores
