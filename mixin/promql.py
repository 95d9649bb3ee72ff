"""Selectors, so that every rule and panel query carries the configured matchers."""

from __future__ import annotations

from mixin.config import MixinConfig


def rule_matchers(config: MixinConfig) -> str:
    """Matchers of alerting and recording rules: the exporter's job only."""
    return f'job="{config.job}"'


def dashboard_matchers(config: MixinConfig, instance: bool = True, netns: bool = False) -> str:
    """Matchers of dashboard queries: the $cluster (when configured), $job, and optionally
    $instance and $netns template variables."""
    parts = []
    if config.cluster_label:
        parts.append(f'{config.cluster_label}=~"$cluster"')
    parts.append('job=~"$job"')
    if instance:
        parts.append('instance=~"$instance"')
    if netns:
        parts.append('netns=~"$netns"')
    return ", ".join(parts)


def selector(metric: str, matchers: str, *extra: str) -> str:
    """metric{matchers, extra...}."""
    return f"{metric}{{{', '.join([matchers, *extra])}}}"
