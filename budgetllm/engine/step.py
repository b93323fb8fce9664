"""The one per-token step both backends apply (torch-free).

Both loops do the same thing with a token: the thinking controller may force one (the hand-off
text and the close tag when the budget is spent, a tool-call opening at the start of the answer),
which replaces the sampled one; an answer token must be accepted by the call's grammar (else the
request ends by "length": a dead end); inside the thinking block an EOS closes the block instead of
ending it; after it an EOS ends the request ("stop"); the answer budget ends it ("length"); a
cancelled request ends with "cancelled". What differs is only how each loop gets its token: the
reference backend samples on the host, and only when nothing is forced (``sampled`` is a function);
the paged backend has sampled every row on the GPU already (``sampled`` is the token id).

:func:`sampling_masks` is the one place that decides what sampling must exclude (the tokens banned
after a closed thinking block, and the grammar, which starts with the answer).
"""

from __future__ import annotations

from collections.abc import Callable

from budgetllm.engine.request import GenerationRequest, StepOutput


def sampling_masks(req: GenerationRequest) -> tuple[list[int] | None, object]:
    """(banned token ids or None, the grammar or None) for the next sample of ``req``.

    Tokens in ``banned_after_thinking`` (e.g. another open tag) are banned once a call that had a
    thinking budget is past its block; the grammar constrains the answer only."""
    ctrl = req.controller
    banned = req.banned_after_thinking if not ctrl.thinking and ctrl.budget else None
    return banned, (None if ctrl.thinking else req.constraint)


def feeds_sampled(req: GenerationRequest) -> bool:
    """True when :func:`advance` will feed the next sampled token as it is unless it is an EOS (which
    ends the request) or the request is cancelled meanwhile, and the token leaves
    :func:`sampling_masks` as they are: no grammar, nothing forced, no phase change, no budget end
    (``ThinkingController.steady``; a sampled :func:`void_ids` token voids the step instead). The
    paged engine launches a step ahead only then."""
    return not req.cancelled and req.constraint is None and req.controller.steady()


def void_ids(req: GenerationRequest) -> list[int]:
    """The sampled ids after which the next token is no longer the sampled one fed as it is: the EOS
    ids (the request ends, or an EOS inside the thinking block is replaced by the close) and the ids
    that change the thinking phase. A step launched ahead after one of them is void."""
    return [*req.eos_ids, *req.controller.watch_ids()]


def advance(req: GenerationRequest, sampled: int | Callable[[], int]) -> list[StepOutput]:
    """Apply one token to ``req``: the outputs to emit, in order (a token, a finish, or both).

    ``sampled`` is the sampled token id, or a function that samples it (called only when the
    controller forces no token). When no output has finished, the last one's ``token_id`` is the
    token to feed next (it may differ from the sampled one: a forced token replaces it)."""
    ctrl = req.controller
    if req.cancelled:
        return [StepOutput(-1, False, finished="cancelled")]
    forced = ctrl.next_forced()
    if forced is None and ctrl.answer_budget_left() <= 0:
        return [StepOutput(-1, False, finished="length")]
    tok = forced if forced is not None else int(sampled() if callable(sampled) else sampled)
    thinking = ctrl.thinking
    if not thinking and req.constraint is not None and not req.constraint.accept(tok):
        return [StepOutput(-1, False, finished="length")]  # a dead end of the grammar
    if thinking:
        if not ctrl.observe(tok, is_eos=forced is None and tok in req.eos_ids):
            tok = ctrl.next_forced()  # an EOS inside the block: the controller closes it instead
            thinking = ctrl.thinking
            ctrl.observe(tok)
    elif tok in req.eos_ids:
        return [StepOutput(tok, False, finished="stop")]
    else:
        ctrl.observe(tok)
    out = [StepOutput(tok, thinking)]
    if not ctrl.thinking and ctrl.answer_budget_left() <= 0:
        out.append(StepOutput(-1, False, finished="length"))  # no need to feed the last token
    elif req.cancelled:
        out.append(StepOutput(-1, False, finished="cancelled"))
    return out
