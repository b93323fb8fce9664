"""Escalation: more budget or width when no answer was extracted; composition keeps caps."""

from policy_helpers import ctx

from budgetllm.policy import (
    EffortPolicy,
    EscalationPolicy,
    EscalationStep,
    FixedPolicy,
    LoadAwarePolicy,
    MemoryCapPolicy,
    PolicyChain,
)

MiB = 2**20


def test_the_default_ladder_doubles_then_votes():
    policy = EscalationPolicy(FixedPolicy(thinking_budget=512, compression=2, max_tokens=768))
    first = policy.plan(ctx())
    second = policy.escalate(ctx(), first, 1)
    assert (second.thinking_budget, second.compression, second.max_tokens) == (1024, 4, 1280)
    assert "escalation 1/2" in second.reasons["thinking_budget"]
    third = policy.escalate(ctx(), second, 2)
    assert (third.thinking_budget, third.width) == (0, 4)
    assert third.temperature and "voting" in third.reasons["temperature"]
    assert policy.escalate(ctx(), third, 3) is None


def test_no_calls_left_means_no_retry():
    policy = EscalationPolicy(FixedPolicy(thinking_budget=512))
    assert policy.escalate(ctx(calls_left=0), policy.plan(ctx()), 1) is None


def test_a_chain_keeps_the_cap_on_retries():
    base = EscalationPolicy(EffortPolicy(), steps=(EscalationStep(thinking_budget_factor=4),))
    chain = PolicyChain(base, [MemoryCapPolicy(max_peak_kv_bytes=16 * MiB)])
    context = ctx(200, reasoning_effort="low")
    first = chain.plan(context)
    retry = chain.escalate(context, first, 1)
    for p in (first, retry):
        assert p is None or p.peak_kv_bytes <= 16 * MiB
    assert retry is None or retry.thinking_budget >= first.thinking_budget


def test_an_escalation_the_cap_undoes_is_exhausted():
    base = EscalationPolicy(
        FixedPolicy(thinking_budget=4096, compression=8, max_tokens=4352),
        steps=(EscalationStep(thinking_budget_factor=2),),
    )
    chain = PolicyChain(base, [MemoryCapPolicy(max_thinking_budget=4096)])
    assert chain.escalate(ctx(), chain.plan(ctx()), 1) is None


def test_a_chain_without_escalation_never_retries():
    chain = PolicyChain(FixedPolicy(), [])
    assert chain.escalate(ctx(), chain.plan(ctx()), 1) is None


def test_each_stage_adds_its_reason():
    chain = PolicyChain(
        EffortPolicy(), [LoadAwarePolicy(), MemoryCapPolicy(max_peak_kv_bytes=30 * MiB)], name="composed"
    )
    p = chain.plan(ctx(3000, reasoning_effort="medium", free_kv_bytes=10, total_kv_bytes=100))
    assert p.policy == "composed"
    assert "effort 'medium'" in p.reasons["thinking_budget"]
    assert "pool only 10% free" in p.reasons["compression"]
    assert "fits under" in p.reasons["memory"] or "cannot fit" in p.reasons["memory"]
