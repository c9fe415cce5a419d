"""Masks: every input format -> id map, sizes, atomic indexed PNGs with the DAVIS palette."""

import numpy as np
import pytest
from PIL import Image

from siammae.data import masks as M
from siammae.data.palette import davis_palette, davis_palette_flat
from siammae.errors import InputError


# ------------------------------------------------------------------------------------------------- palette
def test_palette_known_entries():
    pal = davis_palette()
    assert pal.shape == (256, 3) and pal.dtype == np.uint8
    assert tuple(pal[0]) == (0, 0, 0)
    assert tuple(pal[1]) == (128, 0, 0)
    assert tuple(pal[2]) == (0, 128, 0)
    assert tuple(pal[3]) == (128, 128, 0)
    assert tuple(pal[4]) == (0, 0, 128)
    assert tuple(pal[8]) == (64, 0, 0)
    assert tuple(pal[255]) == (224, 224, 192)
    assert len({tuple(c) for c in pal}) == 256  # every id its own colour
    assert not pal.flags.writeable
    assert davis_palette_flat()[:9] == [0, 0, 0, 128, 0, 0, 0, 128, 0]


def test_palette_equals_the_davis_files(fixture_data):
    with Image.open(fixture_data / "davis2016/osvos_predictions/blackswan/00000.png") as im:  # all 256 colours
        theirs = np.array(im.getpalette(), dtype=np.uint8).reshape(-1, 3)
    np.testing.assert_array_equal(davis_palette()[: len(theirs)], theirs)


# ----------------------------------------------------------------------------------------- input formats
def _ids():
    ids = np.zeros((12, 16), np.uint8)
    ids[2:6, 3:8] = 1
    ids[7:11, 9:15] = 7
    ids[0, 0] = 200
    return ids


def test_mode_p_keeps_ids_and_ignores_the_palette():
    im = Image.fromarray(_ids())
    im.putpalette([255 - v for v in davis_palette_flat()])  # any palette: ids are the pixel values
    assert im.mode == "P"
    np.testing.assert_array_equal(M.image_to_ids(im), _ids())


def test_mode_l_binary_255_is_object_1_other_values_are_ids():
    a = np.zeros((8, 8), np.uint8)
    a[2:5, 2:5] = 255
    np.testing.assert_array_equal(M.image_to_ids(Image.fromarray(a)), (a == 255).astype(np.uint8))
    b = a.copy()
    b[6, 6] = 3
    np.testing.assert_array_equal(M.image_to_ids(Image.fromarray(b)), b)  # not {0, 255}: the values are ids


def test_mode_1_and_mode_i():
    a = np.zeros((8, 8), bool)
    a[1:4, 2:6] = True
    np.testing.assert_array_equal(M.image_to_ids(Image.fromarray(a)), a.astype(np.uint8))
    ids = _ids().astype(np.int32)
    np.testing.assert_array_equal(M.image_to_ids(Image.fromarray(ids)), ids)
    ids[0, 1] = 300
    with pytest.raises(InputError, match=r"0\.\.300.*0\.\.255"):
        M.image_to_ids(Image.fromarray(ids), "big.png")


def test_rgb_davis_colours_keep_their_index():
    rgb = davis_palette()[_ids()]  # a DAVIS mask saved as RGB
    np.testing.assert_array_equal(M.image_to_ids(Image.fromarray(rgb)), _ids())


def test_rgb_other_colours_are_numbered_in_colour_order_and_alpha_0_is_background():
    rgba = np.zeros((6, 6, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[0:2, 0:2, :3] = (10, 200, 30)  # 24-bit value 0x0AC81E
    rgba[3:5, 3:5, :3] = (250, 1, 1)  # 0xFA0101: larger -> id 2
    rgba[5, 5] = (99, 99, 99, 0)  # transparent: background
    ids = M.image_to_ids(Image.fromarray(rgba))
    assert ids[0, 0] == 1 and ids[4, 4] == 2 and ids[5, 5] == 0 and ids[2, 2] == 0
    assert set(np.unique(ids)) == {0, 1, 2}


def test_rgb_with_too_many_colours_is_an_error():
    rng = np.random.default_rng(0)
    rgb = np.zeros((20, 20, 3), np.uint8)
    rgb.reshape(-1, 3)[:300] = rng.choice(2**24 - 1, 300, replace=False)[:, None] >> np.array([16, 8, 0]) & 255
    with pytest.raises(InputError, match="at most 255"):
        M.image_to_ids(Image.fromarray(rgb), "many.png")


def test_real_masks(shared_data):
    bike = M.read_mask(shared_data / "cutie/masks/bike/00000.png")
    assert set(np.unique(bike)) == {0, 1, 2} and bike.shape == (480, 854)
    swan = M.read_mask(shared_data / "davis2016/Annotations/480p/blackswan/00000.png")  # mode L {0, 255}
    assert set(np.unique(swan)) == {0, 1}
    assert M.read_mask(shared_data / "cutie/masks/judo/00005.png").shape == (480, 853)


# ---------------------------------------------------------------------------------------------- bad input
def test_read_mask_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="nope.png: no such mask file"):
        M.read_mask(tmp_path / "nope.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(InputError, match="bad.png: cannot read mask image"):
        M.read_mask(bad)
    with pytest.raises(InputError, match="is a folder"):
        M.read_mask(tmp_path)


def test_fit_mask_same_aspect_resizes_with_a_warning_other_aspect_fails():
    ids = np.zeros((48, 85), np.uint8)
    ids[10:20, 30:50] = 2
    assert M.fit_mask(ids, (48, 85)) is ids
    with pytest.warns(M.MaskResizeWarning, match="85x48 but the video is 170x96"):
        big = M.fit_mask(ids, (96, 170), "m.png")
    assert big.shape == (96, 170) and set(np.unique(big)) == {0, 2}
    assert (big[20:40, 60:100] == 2).all()  # nearest neighbour: each pixel becomes a 2x2 block
    with pytest.raises(InputError, match=r"m.png: mask is 85x48 but the video is 64x48 \(another aspect ratio"):
        M.fit_mask(ids, (48, 64), "m.png")


def test_empty_mask_is_an_error():
    with pytest.raises(InputError, match="e.png: mask is empty"):
        M.check_objects(np.zeros((4, 4), np.uint8), "e.png")
    np.testing.assert_array_equal(M.check_objects(_ids()), [1, 7, 200])


# ------------------------------------------------------------------------------------------------- output
def test_write_mask_round_trip_indexed_with_the_palette(tmp_path):
    path = tmp_path / "sub" / "00003.png"
    M.write_mask(path, _ids())
    with Image.open(path) as im:
        assert im.mode == "P"
        np.testing.assert_array_equal(np.asarray(im), _ids())
        assert im.getpalette()[:12] == davis_palette_flat()[:12]
    assert [p.name for p in path.parent.iterdir()] == ["00003.png"]  # no temp file left


def test_write_mask_failure_leaves_no_file(tmp_path, monkeypatch):
    def broken_save(self, fp, *args, **kwargs):
        with open(fp, "wb") as f:
            f.write(b"\x89PNG half")  # a torn file under the temp name
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(InputError, match=r"cannot write .*00000\.png: No space left on device"):
        M.write_mask(tmp_path / "00000.png", _ids())
    assert list(tmp_path.iterdir()) == []


def test_list_masks(tmp_path):
    with pytest.raises(InputError, match="no such mask folder"):
        M.list_masks(tmp_path / "x")
    with pytest.raises(InputError, match="mask folder has no images"):
        M.list_masks(tmp_path)
    M.write_mask(tmp_path / "00004.png", _ids())
    (tmp_path / "notes.txt").write_text("ignored")
    assert list(M.list_masks(tmp_path)) == ["00004"]
    Image.fromarray(_ids()).save(tmp_path / "00004.jpg")
    with pytest.raises(InputError, match="two masks for frame '00004'"):
        M.list_masks(tmp_path)


class _Video:
    """What first_masks reads of an open video file: 4 frames of 16x16, numbered, not a folder."""

    path, is_folder, num_frames, height, width = "v.mp4", False, 4, 16, 16


@pytest.mark.parametrize(
    "names, both",
    [
        (["00003", "3"], "00003.png and 3.png"),  # object 5 and object 7: frame 3 got {1, 2, 7}, 5 silently dropped
        (["003", "00003"], "00003.png and 003.png"),
        (["00000", "0"], "0.png and 00000.png"),  # 0.png was dropped
    ],
)
def test_two_mask_files_for_one_video_frame_are_an_error_naming_both(tmp_path, names, both):
    folder = tmp_path / "md"
    folder.mkdir()
    M.write_mask(folder / "00000.png", np.pad(np.ones((8, 8), np.uint8), 4))
    for i, name in enumerate(names):
        M.write_mask(folder / f"{name}.png", np.full((16, 16), 5 + 2 * i, np.uint8))
    with pytest.raises(InputError, match=f"{both} are both the mask of frame {int(names[0])}; keep one"):
        M.first_masks(None, folder, _Video())


def test_mask_names_of_a_video_frame_in_any_number_of_digits(tmp_path):
    folder = tmp_path / "md"
    folder.mkdir()
    M.write_mask(folder / "0.png", np.pad(np.ones((8, 8), np.uint8), 4))  # frame 0 by its short name
    M.write_mask(folder / "003.png", np.full((16, 16), 5, np.uint8))
    first, later = M.first_masks(None, folder, _Video())
    assert first.max() == 1 and list(later) == ["00003"] and later["00003"].name == "003.png"
