"""workbench.loading.load_model: every spec kind loads the same numbers it was saved from, offline.

Hugging Face models are random tiny configs saved with ``save_pretrained`` (safetensors) to tmp_path; state
dicts, TorchScript and Lightning checkpoints are written here too. Nothing is downloaded.
"""

import textwrap

import pytest
import torch
from torch import nn

from workbench.loading import describe_spec, load_model, resolve_device

transformers = pytest.importorskip("transformers")

BUILDER_SRC = """
import torch
from torch import nn


def make():
    torch.manual_seed(123)  # a different initialisation than the saved weights
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
"""


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).eval()


@pytest.fixture
def builder_module(tmp_path, monkeypatch):
    (tmp_path / "tinybuild.py").write_text(textwrap.dedent(BUILDER_SRC))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "tinybuild:make"


def _hf_models():
    torch.manual_seed(0)
    bert = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, num_labels=3
    )
    gpt2 = transformers.GPT2Config(vocab_size=50, n_embd=16, n_layer=2, n_head=2, n_positions=32)
    vit = transformers.ViTConfig(
        image_size=8,
        patch_size=4,
        num_channels=1,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=4,
    )
    llama = transformers.LlamaConfig(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
    )
    ids = dict(input_ids=torch.randint(0, 50, (2, 7)))
    return {
        "bert": (transformers.BertForSequenceClassification(bert), ids),
        "gpt2": (transformers.GPT2LMHeadModel(gpt2), ids),
        "vit": (transformers.ViTForImageClassification(vit), dict(pixel_values=torch.randn(2, 1, 8, 8))),
        "llama": (transformers.LlamaForCausalLM(llama), ids),
    }


@pytest.mark.parametrize("name", ["bert", "gpt2", "vit", "llama"])
def test_a_hugging_face_directory_loads_the_saved_class_and_gives_the_same_logits(tmp_path, name):
    model, inputs = _hf_models()[name]
    model.eval()
    model.save_pretrained(tmp_path / name)  # safetensors
    assert (tmp_path / name / "model.safetensors").exists()
    with torch.no_grad():
        want = model(**inputs).logits
    for spec in (str(tmp_path / name), f"hf:{tmp_path / name}", tmp_path / name):
        assert describe_spec(spec) == "hf"
        m = load_model(spec, device="cpu")
        assert type(m) is type(model) and not m.training
        with torch.no_grad():
            got = m(**inputs).logits
        assert got.shape == want.shape
        assert torch.equal(got, want), (got - want).abs().max()
    if name == "gpt2":  # tied input / output embeddings stay tied
        assert m.lm_head.weight.data_ptr() == m.transformer.wte.weight.data_ptr()


def test_a_directory_without_architectures_loads_as_automodel(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    model = transformers.BertModel(cfg).eval()
    model.save_pretrained(tmp_path / "b")
    m = load_model(tmp_path / "b")
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(m(input_ids=ids).last_hidden_state, model(input_ids=ids).last_hidden_state)
    assert type(m).__name__ == "BertModel"


def test_a_hugging_face_directory_keeps_its_saved_dtype(tmp_path):
    model, inputs = _hf_models()["llama"]
    model = model.to(torch.bfloat16).eval()
    model.save_pretrained(tmp_path / "bf16")
    m = load_model(tmp_path / "bf16")
    assert m.dtype == torch.bfloat16
    # the weights round-trip bit for bit (logits differ: .to(bf16) also rounded the rotary inv_freq buffer, which
    # a freshly built model keeps in float32)
    want = dict(model.named_parameters())
    assert all(torch.equal(p, want[n]) for n, p in m.named_parameters()) and len(want) == len(list(m.parameters()))


def test_a_safetensors_state_dict_goes_into_the_builders_module(tmp_path, builder_module):
    from safetensors.torch import save_file

    net = _net(seed=7)
    save_file(net.state_dict(), tmp_path / "w.safetensors")
    x = torch.randn(5, 4)
    assert describe_spec(tmp_path / "w.safetensors") == "safetensors"
    for builder in (builder_module, lambda: nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))):
        m = load_model(tmp_path / "w.safetensors", builder=builder)
        assert torch.equal(m(x), net(x)) and not m.training


def test_safetensors_save_model_with_tied_weights_loads_the_tie(tmp_path):
    from safetensors.torch import save_model

    def make():
        emb = nn.Embedding(10, 4)
        head = nn.Linear(4, 10, bias=False)
        head.weight = emb.weight
        return nn.Sequential(emb, head)

    torch.manual_seed(3)
    net = make().eval()
    save_model(net, str(tmp_path / "tied.safetensors"))  # writes the shared tensor once
    m = load_model(tmp_path / "tied.safetensors", builder=make)
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(m(ids), net(ids))
    assert m[1].weight is m[0].weight


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin"])
def test_a_torch_state_dict_file_goes_into_the_builders_module(tmp_path, builder_module, suffix):
    net = _net(seed=5)
    torch.save(net.state_dict(), tmp_path / f"w{suffix}")
    torch.save({"state_dict": net.state_dict(), "epoch": 3}, tmp_path / f"ckpt{suffix}")  # a training checkpoint
    x = torch.randn(5, 4)
    for f in (f"w{suffix}", f"ckpt{suffix}"):
        assert describe_spec(tmp_path / f) == "state_dict"
        assert torch.equal(load_model(tmp_path / f, builder=builder_module)(x), net(x))


def test_a_pickled_whole_model_is_refused_by_weights_only(tmp_path, builder_module):
    torch.save(_net(), tmp_path / "whole.pt")
    msg = r"^spec: .*whole.pt' cannot be read with torch.load\(weights_only=True\) \(UnpicklingError\): it holds"
    with pytest.raises(ValueError, match=msg):
        load_model(tmp_path / "whole.pt", builder=builder_module)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch 2.13 deprecates torch.jit
def test_a_torchscript_file_loads_with_jit(tmp_path):
    net = _net(seed=2)
    x = torch.randn(5, 4)
    for name in ("scripted.pt", "traced.ts"):
        scripted = torch.jit.script(net) if name.startswith("s") else torch.jit.trace(net, x)
        torch.jit.save(scripted, tmp_path / name)
        assert describe_spec(tmp_path / name) == "torchscript"
        m = load_model(tmp_path / name, device="auto")
        assert isinstance(m, torch.jit.ScriptModule) and not m.training
        assert torch.equal(m(x.to(next(m.parameters()).device)).cpu(), net(x))


def test_devices():
    assert resolve_device(None) is None and resolve_device("") is None
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert next(load_model(_net(), device="cpu").parameters()).device.type == "cpu"
    with pytest.raises(ValueError, match="^device: expected"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="^device: 'cuda' asked, but torch sees no CUDA device"):
            load_model(_net(), device="cuda")


def test_errors_name_the_spec_and_say_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"^spec: no such file or directory '.*missing.pt'; expected a demo"):
        load_model(str(tmp_path / "missing.pt"), builder="tinybuild:make")
    with pytest.raises(FileNotFoundError, match=r"^spec: no such file"):
        load_model(f"hf:{tmp_path / 'nothing'}")
    (tmp_path / "w.onnx").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"^spec: unknown file kind '.onnx' of .*; expected a demo-zoo model name"):
        load_model(tmp_path / "w.onnx")
    torch.save(_net().state_dict(), tmp_path / "w.pt")
    with pytest.raises(ValueError, match=r"^builder: the state dict .*w.pt' needs builder='package.module:function'"):
        load_model(tmp_path / "w.pt")
    with pytest.raises(ValueError, match=r"^builder: cannot import 'no_such_pkg'"):
        load_model(tmp_path / "w.pt", builder="no_such_pkg:make")
    with pytest.raises(ValueError, match=r"^spec: the weights in .*w.pt' do not fit"):
        load_model(tmp_path / "w.pt", builder=lambda: nn.Linear(4, 3))
    with pytest.raises(ValueError, match=r"^builder: .* returned a int, not an nn.Module"):
        load_model(tmp_path / "w.pt", builder=lambda: 3)
    for hub in ("bert-base-uncased/x", "meta-llama/Llama-3.2-1B", "hf:openai-community/gpt2"):
        with pytest.raises(ValueError, match=r"looks like a Hugging Face hub id .*never uses the network"):
            load_model(hub)
    with pytest.raises(ValueError, match=r"^spec: no zoo model 'no-such-model' and no such file; expected .*Zoo: mlp"):
        load_model("no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"^spec: directory .* has no config.json"):
        load_model(tmp_path / "empty")
    with pytest.raises(ValueError, match=r"^module_class: only a Lightning .ckpt takes module_class"):
        load_model(tmp_path / "w.pt", module_class=nn.Linear)
    with pytest.raises(ValueError, match=r"^builder: a zoo spec"):
        load_model("mlp-sgd-small-s0", builder="tinybuild:make")
    with pytest.raises(ValueError, match=r"^weights_only: only weights_only=True"):
        load_model(tmp_path / "w.pt", builder="tinybuild:make", weights_only=False)
    with pytest.raises(ValueError, match=r"^spec: expected a name or path"):
        load_model(3)


def test_zoo_and_module_specs():
    m = load_model("mlp-sgd-small-s0", device="cpu")
    assert not m.training and describe_spec("mlp-sgd-small-s0") == "zoo"
    net = _net().train()
    assert load_model(net) is net and not net.training


LIT_SRC = """
import torch
from torch import nn

try:
    import lightning as L
except ImportError:
    import pytorch_lightning as L


class LitNet(L.LightningModule):
    def __init__(self, width: int = 8, lr: float = 0.1):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(4, width), nn.Tanh(), nn.Linear(width, 3))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def make_net():
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
"""


@pytest.fixture
def lightning_ckpt(tmp_path, monkeypatch):
    """A checkpoint written by a real ``Trainer`` after one step of a LightningModule with width 5."""
    L = pytest.importorskip("lightning") if _has("lightning") else pytest.importorskip("pytorch_lightning")
    (tmp_path / "litmod.py").write_text(textwrap.dedent(LIT_SRC))
    monkeypatch.syspath_prepend(str(tmp_path))
    import litmod

    torch.manual_seed(0)
    lit = litmod.LitNet(width=5)
    data = torch.utils.data.TensorDataset(torch.randn(16, 4), torch.randint(0, 3, (16,)))
    trainer = L.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(lit, torch.utils.data.DataLoader(data, batch_size=8))
    path = tmp_path / "epoch=0-step=1.ckpt"
    trainer.save_checkpoint(path)
    return path, litmod, lit.eval()


def _has(name):
    import importlib.util

    return importlib.util.find_spec(name) is not None


@pytest.mark.filterwarnings("ignore:.*LeafSpec.*")  # lightning 2.6 on torch 2.13
def test_a_lightning_checkpoint_loads_with_its_module_class(lightning_ckpt):
    path, litmod, lit = lightning_ckpt
    x = torch.randn(5, 4)
    assert describe_spec(path) == "lightning"
    ckpt = torch.load(path, weights_only=True)  # what the loader reads: plain data
    assert ckpt["global_step"] == 1 and ckpt["hyper_parameters"]["width"] == 5
    for module_class in (litmod.LitNet, "litmod:LitNet"):
        m = load_model(path, module_class=module_class, device="cpu")
        assert type(m) is litmod.LitNet and m.hparams.width == 5 and not m.training
        assert torch.equal(m(x), lit(x))
    # no LightningModule at hand: its state_dict ("net.0.weight", ...) goes into the builder's network
    m = load_model(path, builder="litmod:make_net")
    assert isinstance(m, nn.Sequential) and torch.equal(m(x), lit(x))
    with pytest.raises(ValueError, match=r"^module_class: a Lightning .ckpt needs module_class="):
        load_model(path)


@pytest.mark.filterwarnings("ignore:.*LeafSpec.*")  # lightning 2.6 on torch 2.13
def test_a_lightning_checkpoint_without_load_from_checkpoint_uses_the_hyperparameters(lightning_ckpt):
    path, litmod, lit = lightning_ckpt

    class Plain(nn.Module):  # a module class without Lightning's classmethod
        def __init__(self, width, lr):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(4, width), nn.Tanh(), nn.Linear(width, 3))

        def forward(self, x):
            return self.net(x)

    x = torch.randn(5, 4)
    assert torch.equal(load_model(path, module_class=Plain)(x), lit(x))


def test_reports_load_model_takes_every_spec_kind(tmp_path, builder_module, monkeypatch):
    from workbench import reports

    model, inputs = _hf_models()["gpt2"]
    model.eval().save_pretrained(tmp_path / "gpt2")
    with torch.no_grad():
        want = model(**inputs).logits
    for spec in (str(tmp_path / "gpt2"), f"hf:{tmp_path / 'gpt2'}"):
        m = reports.load_model(spec, device="auto")
        with torch.no_grad():
            assert torch.equal(m(**{k: v.to(m.device) for k, v in inputs.items()}).logits.cpu(), want)
    assert reports.family(str(tmp_path / "gpt2")) == []
    net = _net(seed=9)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    x = torch.randn(3, 4)
    m = reports.load_model("mlp-sgd-small-s0", str(tmp_path / "w.pt"), builder_module, -1, device="cpu")
    assert torch.equal(m(x), net(x))  # the notebooks' positional call: model, checkpoint, builder, checkpoint_index
    zoo_first = reports.load_model("mlp-sgd-small-s0", checkpoint_index=0)
    zoo_final = reports.load_model("mlp-sgd-small-s0")
    p_first, p_final = (torch.nn.utils.parameters_to_vector(m.parameters()) for m in (zoo_first, zoo_final))
    assert not torch.equal(p_first, p_final)
    with pytest.raises(ValueError, match=r"^builder: the state dict .*w.pt' needs builder="):
        reports.load_model("mlp-sgd-small-s0", str(tmp_path / "w.pt"))
    with pytest.raises(FileNotFoundError, match=r"^checkpoint: no such file or directory '.*gone.ckpt'"):
        reports.load_model("mlp-sgd-small-s0", str(tmp_path / "gone.ckpt"), module_class="litmod:LitNet")
    with pytest.raises(FileNotFoundError, match=r"^model: no such file or directory"):
        reports.load_model(f"hf:{tmp_path / 'none'}")
    with pytest.raises(reports.ReportError, match=r"^checkpoint_index: only a zoo model has saved checkpoints"):
        reports.load_model(str(tmp_path / "gpt2"), checkpoint_index=2)


def test_cli_device_goes_to_reports_that_have_one(monkeypatch, capsys):
    from workbench import cli, reports

    seen = {}

    def fake_run(name, params, out):
        seen[name] = params
        return {"html": "x.html", "ipynb": "x.ipynb", "nc": "x.nc", "seconds": 0.0}

    monkeypatch.setattr(reports, "run_report", fake_run)
    assert "device" in reports.parameters("sharpness")
    assert cli.main(["report", "sharpness", "-p", "k", "3", "--device", "auto"]) == 0
    assert seen["sharpness"] == {"k": "3", "device": "cuda" if torch.cuda.is_available() else "cpu"}
    assert cli.main(["report", "sharpness", "--device", "cpu"]) == 0 and seen["sharpness"] == {"device": "cpu"}
    assert cli.main(["report", "sharpness"]) == 0 and seen["sharpness"] == {}  # the notebook's default stays
    assert cli.main(["report", "landscape", "--device", "cpu"]) == 2
    assert "--device: report 'landscape' has no device parameter (it runs on the CPU); reports with one: sharpness" in (
        capsys.readouterr().err
    )
    if not torch.cuda.is_available():
        assert cli.main(["report", "sharpness", "--device", "cuda"]) == 2
        assert "--device: 'cuda' asked, but torch sees no CUDA device here" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["report", "sharpness", "--device", "gpu"])
    assert "expected cpu, cuda or auto, got 'gpu'" in capsys.readouterr().err


def test_cli_sweep_passes_the_device_as_a_base_parameter(monkeypatch):
    from workbench import cli, reports

    seen = {}

    def fake_sweep(name, grid, out, *, base, **kw):
        seen.update(base=base, grid=grid)
        return {"results": [], "dataset": "d.nc", "summary": "s.html"}

    monkeypatch.setattr(reports, "sweep", fake_sweep)
    assert cli.main(["sweep", "sharpness", "--grid", "k=2,3", "--device", "cpu"]) == 0
    assert seen == {"base": {"device": "cpu"}, "grid": {"k": [2, 3]}}
    # an external scheduler: the workers resolve the device, not this machine
    assert cli.main(["sweep", "sharpness", "--grid", "k=2", "--device", "auto", "--scheduler", "tcp://x:1"]) == 0
    assert seen["base"] == {"device": "auto"}
