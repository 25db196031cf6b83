"""Per-process choices: the encoder, bf16, the active space."""

import logging

import pytest

from recommender import encoders, runtime


def test_auto_encoder_falls_back_to_efficientnet_loudly_without_resnet_weights(settings, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    settings.ENCODER = "auto"
    settings.RESNET50_WEIGHTS_FILE = ""
    settings.ENCODER_ALLOW_DOWNLOAD = False
    runtime.reset()
    with caplog.at_level(logging.WARNING):
        choice = runtime.encoder_choice()
    assert choice.space == encoders.EFFICIENTNET_LITE0_ID
    assert "ResNet50" in choice.note
    assert "FALLBACK" in caplog.text


def test_auto_encoder_uses_resnet50_when_its_weights_file_exists(settings, tmp_path):
    import torch
    import torchvision

    path = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50().state_dict(), path)
    settings.ENCODER = "auto"
    settings.RESNET50_WEIGHTS_FILE = str(path)
    runtime.reset()
    assert runtime.encoder_choice() == runtime.EncoderChoice("resnet50", encoders.RESNET50_ID, None)
    assert runtime.encoder().dim == 2048


@pytest.mark.parametrize("mode", ["auto", "off", "on"])
def test_bf16_setting(settings, mode):
    settings.ENCODER_BF16 = mode
    runtime.reset()
    expected = {"off": False, "on": True, "auto": encoders.cpu_has_native_bf16()}[mode]
    assert runtime.encoder().bf16 is expected
    if expected:
        assert encoders.bf16_agreement(runtime.encoder()) >= runtime.BF16_MIN_COSINE


def test_space_switch_file_overrides_the_setting_and_ignores_garbage(settings):
    assert runtime.active_space() == encoders.EFFICIENTNET_LITE0_ID
    runtime.space_switch_write("efficientnet-lite0-random")
    assert runtime.active_space() == "efficientnet-lite0-random"
    (settings.INDEX_DIR / runtime.ACTIVE_SPACE_FILE).write_text("../../etc")
    assert runtime.active_space() == encoders.EFFICIENTNET_LITE0_ID
    with pytest.raises(encoders.EncoderUnavailable):
        runtime.space_switch_write("nonsense")
