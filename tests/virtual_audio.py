"""A real PortAudio microphone and speaker on a machine without a sound card (shared/reference/VIRTUAL_AUDIO.md):
ALSA's `file` plugin gives the data (the microphone reads a raw file, the speaker writes a WAV file), a private
PulseAudio daemon with null devices gives the real-time clock.

    with VirtualAudio(tmp_path, mic_rate=44100, mic_channels=2) as va:
        va.set_microphone(pcm)               # float32 (channels, samples) at mic_rate
        subprocess.run([...], env=va.env)    # the process sees devices fakemic, fakespk and default
        played = va.speaker_output()

The microphone file must be exactly the format the application opens (no conversion happens): the microphone
stage opens a device at its default rate (44100 for these devices) with min(2, max channels) = 2 channels,
float32. Needs the Debian packages libportaudio2, libasound2-plugins and pulseaudio (Makefile APT_PACKAGES).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

DEVICE_RATE = 44100  # what ALSA's file/pulse plugins report as the devices' default rate


def available() -> str | None:
    """None when the virtual devices can be made here, else the reason they cannot."""
    if shutil.which("pulseaudio") is None:
        return "pulseaudio is not installed (make install-system)"
    if not Path("/usr/lib/x86_64-linux-gnu/alsa-lib/libasound_module_pcm_pulse.so").exists() and not list(
            Path("/usr/lib").glob("*/alsa-lib/libasound_module_pcm_pulse.so")):
        return "libasound2-plugins is not installed (make install-system)"
    return None


class VirtualAudio:
    """Starts the private PulseAudio daemon and writes the ALSA configuration; stops the daemon on exit."""

    def __init__(self, folder: Path, mic_rate: int = DEVICE_RATE, mic_channels: int = 2):
        self.dir = Path(folder).resolve()
        self.mic_rate, self.mic_channels = mic_rate, mic_channels
        self.mic_file, self.speaker_file = self.dir / "mic.raw", self.dir / "speaker.raw"
        self.socket = self.dir / "run" / "native"
        self.config = self.dir / "asound.conf"
        self._daemon: subprocess.Popen | None = None
        self.env = {**os.environ, "ALSA_CONFIG_PATH": f"/usr/share/alsa/alsa.conf:{self.config}"}
        self.env.pop("PULSE_SERVER", None)

    def __enter__(self) -> VirtualAudio:
        (self.dir / "run").mkdir(parents=True, exist_ok=True)
        (self.dir / "home").mkdir(exist_ok=True)
        os.chmod(self.dir / "run", 0o700)
        self.set_microphone(np.zeros((self.mic_channels, 0), dtype=np.float32))
        self.config.write_text(
            f'pcm.fakemic {{ type file  file "/dev/null"  infile "{self.mic_file}"  format "raw"\n'
            f'    slave.pcm {{ type pulse server "unix:{self.socket}" device "silence" }}\n'
            f'    hint {{ show on description "fake mic" }} }}\n'
            f'pcm.fakespk {{ type file  file "{self.speaker_file}"  format "raw"\n'
            f'    slave.pcm {{ type pulse server "unix:{self.socket}" device "spk" }}\n'
            f'    hint {{ show on description "fake speaker" }} }}\n'
            'pcm.!default { type asym capture.pcm "fakemic" playback.pcm "fakespk" }\n')
        env = {**os.environ, "HOME": str(self.dir / "home"), "XDG_RUNTIME_DIR": str(self.dir / "run")}
        env.pop("PULSE_SERVER", None)
        self._daemon = subprocess.Popen(
            ["pulseaudio", "-n", "--daemonize=no", "--exit-idle-time=-1", "--use-pid-file=no", "--disable-shm=yes",
             f"--log-target=file:{self.dir / 'pulse.log'}",
             "-L", f"module-native-protocol-unix socket={self.socket} auth-anonymous=1",
             "-L", f"module-null-source source_name=silence rate={self.mic_rate} channels={self.mic_channels} "
                   "format=s16le",
             "-L", "module-null-sink sink_name=spk rate=24000 channels=1 format=s16le norewinds=1"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not self.socket.exists():
            if self._daemon.poll() is not None or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError(f"the private PulseAudio did not start; see {self.dir / 'pulse.log'}")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        if self._daemon is not None:
            self._daemon.terminate()
            try:
                self._daemon.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._daemon.kill()
                self._daemon.wait()
            self._daemon = None

    def set_microphone(self, pcm: np.ndarray) -> None:
        """What the microphone will capture: float32 (channels, samples) at mic_rate, from each stream's start;
        after its end the microphone gives silence."""
        pcm = np.asarray(pcm, dtype=np.float32)
        assert pcm.ndim == 2 and pcm.shape[0] == self.mic_channels, pcm.shape
        self.mic_file.write_bytes(np.ascontiguousarray(pcm.T).astype("<f4").tobytes())

    def speaker_output(self) -> np.ndarray:
        """Everything the speaker played: float32 (samples,) (the speaker stage opens mono float32)."""
        return np.frombuffer(self.speaker_file.read_bytes(), dtype="<f4")
