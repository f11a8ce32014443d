"""eGeMAPS through openSMILE: 25 descriptors per 10 ms frame, F0 where the pitch is."""

import numpy as np
import pytest

opensmile = pytest.importorskip("opensmile")

from mtl_lightning.audio.egemaps import _smile, egemaps_lld  # noqa: E402


@pytest.mark.parametrize("f0", [110.0, 220.0])
def test_f0_of_a_harmonic_tone_in_semitones(f0):
    sr = 16000
    t = np.arange(sr) / sr
    saw = (0.3 * (2 * ((t * f0) % 1) - 1)).astype(np.float32)  # rich in harmonics, like a voice
    lld = egemaps_lld(saw, sr)
    assert lld.shape == (25, 96)  # 1 s: openSMILE's 60 ms F0 window, every 10 ms
    f0_row = lld[_smile().feature_names.index("F0semitoneFrom27.5Hz_sma3nz")]
    voiced = f0_row[f0_row > 0]
    assert len(voiced) > 80
    # semitones above 27.5 Hz: 12 log2(f0 / 27.5) = 24 for 110 Hz, 36 for 220 Hz
    assert float(voiced.median()) == pytest.approx(12 * np.log2(f0 / 27.5), abs=0.1)
