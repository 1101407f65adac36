"""The loop with toy denoisers and real schedules: its contract with the scheduler, step by step."""

from __future__ import annotations

import torch

from sdcli.loading.components import Model
from sdcli.sampling.loop import Schedule, build_scheduler, denoise, initial_noise
from sdcli.sampling.samplers import get_sampler

CPU = torch.device("cpu")


def run(model: Model, sampler: str, steps: int, seed: int, on_step=None) -> torch.Tensor:
    schedule = Schedule(build_scheduler(get_sampler(sampler), model.scheduler_config), steps, CPU)
    generators = [torch.Generator().manual_seed(seed)]
    noise = initial_noise(generators, (4, 2, 2), CPU, torch.float32)
    return denoise(lambda x, t: 0.5 * x, schedule, schedule.start_from_noise(noise), generators, on_step)


def test_ddim_with_a_perfect_denoiser_stays_on_its_trajectory(loaded: Model):
    """If the model always predicts the noise that lies between x_t and a known x0, deterministic DDIM keeps
    x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps with the starting eps, down to the final alpha."""
    scheduler = build_scheduler(get_sampler("ddim"), loaded.scheduler_config)
    schedule = Schedule(scheduler, 10, CPU)
    alphas_cumprod = scheduler.alphas_cumprod  # (1000,)
    x0 = torch.full((1, 4, 2, 2), 0.3)

    def perfect(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = alphas_cumprod[int(t)]
        return (x_t - a.sqrt() * x0) / (1 - a).sqrt()

    generators = [torch.Generator().manual_seed(0)]
    noise = initial_noise(generators, (4, 2, 2), CPU, torch.float32)
    out = denoise(perfect, schedule, schedule.start_from_noise(noise), generators)  # DDIM: sigma_init 1
    a_start, a_end = alphas_cumprod[int(schedule.timesteps[0])], scheduler.final_alpha_cumprod
    eps = (noise - a_start.sqrt() * x0) / (1 - a_start).sqrt()
    assert torch.allclose(out, a_end.sqrt() * x0 + (1 - a_end).sqrt() * eps, atol=1e-5)
    assert not torch.allclose(out, noise, atol=0.1)


def test_progress_is_reported_after_every_model_call(loaded: Model):
    seen = []
    run(loaded, "heun", 4, 0, on_step=lambda done, total: seen.append((done, total)))
    # Heun makes two model calls per step but the last: 2 * 4 - 1.
    assert seen == [(i, 7) for i in range(1, 8)]


def test_schedules_from_one_scheduler_share_no_state(loaded: Model):
    """A multistep solver remembers its past predictions; each Schedule must start clean."""
    scheduler = build_scheduler(get_sampler("dpm++2m"), loaded.scheduler_config)
    generators = [torch.Generator().manual_seed(0)]
    noise = initial_noise(generators, (4, 2, 2), CPU, torch.float32)
    first = denoise(lambda x, t: 0.5 * x, Schedule(scheduler, 5, CPU), noise, generators)
    second = denoise(lambda x, t: 0.5 * x, Schedule(scheduler, 5, CPU), noise, generators)  # DPM++: sigma_init 1
    assert torch.equal(first, second)


def test_stochastic_samplers_draw_per_step_noise_from_the_images_generator(loaded: Model):
    assert torch.equal(run(loaded, "euler-a", 4, 1), run(loaded, "euler-a", 4, 1))
    assert not torch.equal(run(loaded, "euler-a", 4, 1), run(loaded, "euler-a", 4, 2))
    # The same initial noise with different per-step noise: the ancestral sampler uses the generator after the start.
    generators = [torch.Generator().manual_seed(1)]
    noise = initial_noise(generators, (4, 2, 2), CPU, torch.float32)
    schedule = Schedule(build_scheduler(get_sampler("euler-a"), loaded.scheduler_config), 4, CPU)
    other = denoise(
        lambda x, t: 0.5 * x, schedule, schedule.start_from_noise(noise), [torch.Generator().manual_seed(99)]
    )
    assert not torch.equal(other, run(loaded, "euler-a", 4, 1))
