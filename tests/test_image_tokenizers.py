import pytest
import torch
from PIL import Image

from pararl.image_tokenizers import (
    ImageTokenizer,
    PaletteImageTokenizer,
    images_to_tensor,
    tensor_to_images,
)


PALETTE = [(0, 0, 0), (255, 255, 255), (255, 0, 0), (0, 128, 0), (0, 0, 255), (17, 34, 51), (250, 200, 100)]


@pytest.fixture
def tokenizer():
    # Non-square grid and cells, so a swapped (h, w) anywhere would show.
    return PaletteImageTokenizer(PALETTE, grid_shape=(3, 5), cell_size=(2, 3))


def test_protocol_and_geometry(tokenizer):
    assert isinstance(tokenizer, ImageTokenizer)
    assert tokenizer.codebook_size == 7
    assert tokenizer.grid_shape == (3, 5)
    assert tokenizer.image_size == (6, 15)


def test_decode_paints_exact_palette_colours(tokenizer):
    codes = torch.tensor([[[0, 1, 2, 3, 4], [5, 6, 0, 1, 2], [3, 4, 5, 6, 0]]])
    pixels = tokenizer.decode(codes)
    assert pixels.shape == (1, 3, 6, 15) and pixels.dtype == torch.float32
    # Cell (1, 1) holds code 6: rows 2-3, cols 3-5.
    expected = torch.tensor(PALETTE[6], dtype=torch.float32) / 255.0
    assert torch.equal(pixels[0, :, 2:4, 3:6], expected.view(3, 1, 1).expand(3, 2, 3))
    assert torch.equal(pixels[0, :, 0, 0], torch.zeros(3))


def test_round_trip_tensor_and_pil(tokenizer):
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 7, (6, 3, 5), generator=generator)
    pixels = tokenizer.decode(codes)
    assert torch.equal(tokenizer.encode(pixels), codes)
    images = tensor_to_images(pixels)
    assert all(image.size == (15, 6) and image.mode == "RGB" for image in images)
    assert torch.equal(tokenizer.encode(images), codes)
    assert torch.equal(images_to_tensor(images), pixels)
    # Other PIL modes are converted to RGB first.
    assert torch.equal(tokenizer.encode([images[0].convert("RGBA")]), codes[:1])
    # A uint8 tensor in [0, 255] works too.
    assert torch.equal(tokenizer.encode((pixels * 255).round().to(torch.uint8)), codes)


def test_wrong_size_raises(tokenizer):
    with pytest.raises(ValueError, match=r"must be 6x15 pixels \(H x W\), got 6x14"):
        tokenizer.encode([Image.new("RGB", (14, 6))])
    with pytest.raises(ValueError, match=r"must be 6x15 pixels \(H x W\), got 7x15"):
        tokenizer.encode(torch.zeros(1, 3, 7, 15))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        tokenizer.encode(torch.zeros(3, 6, 15))


def test_off_palette_and_non_uniform_cells_raise(tokenizer):
    pixels = tokenizer.decode(torch.zeros(2, 3, 5, dtype=torch.long))
    off = pixels.clone()
    off[1, :, 4:6, 12:15] = torch.tensor([1.0, 1.0, 0.0]).view(3, 1, 1)  # yellow, not in the palette
    with pytest.raises(ValueError, match=r"image 1, cell \(row 2, col 4\) has colour \(255, 255, 0\)"):
        tokenizer.encode(off)
    mixed = pixels.clone()
    mixed[0, :, 3, 7] = 1.0  # one white pixel inside cell (1, 2)
    with pytest.raises(ValueError, match=r"image 0, cell \(row 1, col 2\) is not one uniform colour"):
        tokenizer.encode(mixed)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        tokenizer.encode(pixels + 1.5)


def test_codes_outside_codebook_raise(tokenizer):
    codes = torch.zeros(1, 3, 5, dtype=torch.long)
    codes[0, 2, 1] = 7
    with pytest.raises(ValueError, match=r"\[0, 7\).*got 7 at \(image 0, row 2, col 1\)"):
        tokenizer.decode(codes)
    with pytest.raises(ValueError, match="got -1"):
        tokenizer.decode(codes.clamp(max=0) - 1)
    with pytest.raises(ValueError, match="shape"):
        tokenizer.decode(torch.zeros(3, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        tokenizer.decode(torch.zeros(1, 3, 5))


def test_bad_palette_raises():
    with pytest.raises(ValueError, match="repeated"):
        PaletteImageTokenizer([(1, 2, 3), (1, 2, 3)])
    with pytest.raises(ValueError, match=r"palette\[1\]"):
        PaletteImageTokenizer([(1, 2, 3), (1, 2, 300)])


def test_tensor_to_images_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        tensor_to_images(torch.zeros(1, 4, 2, 2))
    with pytest.raises(ValueError, match="different sizes"):
        images_to_tensor([Image.new("RGB", (2, 2)), Image.new("RGB", (3, 2))])


def test_toy_image_tokenizer_round_trips_scenes():
    from pararl.toy import TOY_PALETTE, render_scene, scene_codes, toy_image_tokenizer
    from pararl.toy.scenes import ToyObject

    tokenizer = toy_image_tokenizer()
    assert (tokenizer.codebook_size, tokenizer.grid_shape, tokenizer.image_size) == (
        len(TOY_PALETTE),
        (8, 8),
        (32, 32),
    )
    objects = [ToyObject("square", "red", 0), ToyObject("dot", "white", 4), ToyObject("pole", "black", 8)]
    codes = scene_codes(objects)
    image = render_scene(objects)
    assert torch.equal(tokenizer.encode([image])[0], codes)
    assert torch.equal(images_to_tensor([image]), tokenizer.decode(codes[None]))
