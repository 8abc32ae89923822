"""Rates, compression factors and the frame arithmetic shared by every part of portrait-rt (paper §3.1, §4.1).

Video frames run at 25 fps; a latent frame holds 4 video frames, except a stream's first latent frame, which holds
one ("split-first"). So `t` latent frames decode to `1 + 4(t - 1)` video frames at a stream's start and `4t` later.
"""

SAMPLE_RATE = 16_000  # model audio rate (Hz)
FPS = 25  # video frame rate
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640 audio samples per video frame
TEMPORAL_COMPRESSION = 4  # video frames per latent frame (the first latent frame holds one video frame)
SPATIAL_COMPRESSION = 64  # pixels per latent pixel along each side
LATENT_CHANNELS = 64
MAX_REFERENCES = 3
SCHEDULER_SHIFT = 5.0  # the flow-matching timestep shift (paper §4.1)
MAX_BLOCK_SIZE = 4  # latent frames per block: the paper's k = 4 (16 video frames)


def video_frames_for_latents(num_latent_frames: int, first: bool = True) -> int:
    """Video frames decoded from `num_latent_frames` latent frames (1 + 4(T-1) at stream start, else 4T)."""
    if num_latent_frames <= 0:
        return 0
    return 1 + TEMPORAL_COMPRESSION * (num_latent_frames - 1) if first else TEMPORAL_COMPRESSION * num_latent_frames


def usable_video_frames(num_video_frames: int) -> int:
    """The longest stream-start length 1 + 4n within `num_video_frames`: the frames of a clip the VAE encodes whole."""
    if num_video_frames <= 0:
        return 0
    return video_frames_for_latents(1 + (num_video_frames - 1) // TEMPORAL_COMPRESSION)


def valid_block_sizes(kv_window: int) -> list[int]:
    """Block sizes (latent frames) a KV window of `kv_window` latent frames allows: 1 to 4, a whole number of blocks
    per window, at least two (the window resets to the references and re-feeds the last block, Algorithm 2)."""
    return [k for k in range(1, MAX_BLOCK_SIZE + 1) if kv_window % k == 0 and kv_window >= 2 * k]


def check_block_size(block_size: int, kv_window: int) -> None:
    """Raise `ValueError` saying what to change unless `block_size` is in `valid_block_sizes(kv_window)`."""
    if block_size not in valid_block_sizes(kv_window):
        raise ValueError(
            f"block_size={block_size} latent frames does not fit kv_window={kv_window}: use one of "
            f"{valid_block_sizes(kv_window)} (1 to {MAX_BLOCK_SIZE}, a whole number of blocks per window, at least "
            "two; 4 = 16 video frames is the paper's)."
        )
