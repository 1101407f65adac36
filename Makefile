# sdcli: set-up, tests, demo, benchmarks and the built-in model.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch goes in first and on its own, so pip never resolves a multi-GB CUDA build here.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install test test-slow lint docs demo bench bench-cpu bench-gpu shapes-model shapes-classifier shapes-lora clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[test,ray]"
	touch $@

test: install
	$(BIN)/python -m pytest -q

lint: install  # the rules in pyproject.toml's [tool.ruff]; the README's option tables made from the CLI
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

docs: install  # rewrites the README's option tables from the commands' own options
	$(BIN)/python -m sdcli.cli.docs README.md

test-slow: install
	$(BIN)/python -m pytest -q -m slow

demo: install
	$(BIN)/sdcli generate "a red circle on a white background" -n 4 --seed 42 --out-dir outputs/demo --overwrite

bench: install
	$(BIN)/python benchmarks/bench_loop.py
	$(BIN)/python benchmarks/bench_loop.py --strength 0.6  # img2img against StableDiffusionImg2ImgPipeline
	# start-up as installed: bytecode written, as pip writes it for a regular install (an editable install has
	# none, and where PYTHONDONTWRITEBYTECODE is set every start would compile the sources again)
	$(BIN)/python -m compileall -q src
	$(BIN)/python benchmarks/bench_startup.py
	$(BIN)/python benchmarks/bench_ray.py  # batch --executor ray against local: throughput, driver cost

bench-cpu: install  # sdcli's defaults against diffusers' fp32 pipeline, SD 1.5 architecture, random weights
	$(BIN)/python benchmarks/bench_cpu.py

bench-gpu: install  # SD 1.5 architecture at 512x512, 30 steps, fp16, batch 1 and 4, eager and compiled (CUDA)
	$(BIN)/python benchmarks/bench_gpu.py

shapes-model: install
	$(BIN)/sdcli train-shapes --out src/sdcli/models/shapes --work-dir runs/shapes

shapes-classifier: install  # needs runs/shapes/latents.pt from shapes-model
	$(BIN)/python -m sdcli.shapes.train_classifier --work-dir runs/shapes --out src/sdcli/models/shapes/classifier

# Widen the built-in model's VAE in place to colours its world never draws (this changes the base model: see the
# README's figures), train the pink LoRA over it and measure it. Seeded; each stage checkpoints to runs/.
shapes-lora: install
	$(BIN)/python -m sdcli.shapes.widen_vae --model src/sdcli/models/shapes --work-dir runs/widen-vae
	$(BIN)/python -m sdcli.shapes.train_lora --colour pink=255,128,192 --work-dir runs/pink \
		--out src/sdcli/models/shapes/loras/pink.safetensors
	$(BIN)/python -m sdcli.shapes.measure_lora --lora pink --colour pink

clean:
	rm -rf $(VENV) outputs build src/*.egg-info
