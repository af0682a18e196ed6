"""Camera rendering by ray casting: analytic ground plane + upright boxes with a z-buffer.

Each box is only tested against the pixels inside the bounding rectangle of its projected
corners (a rasteriser's tile test done with rays), which keeps the cost proportional to the
image area the objects cover. Rendering happens at `render_scale` of 1600x900 and is upsampled.
The per-pixel owner buffer gives, per agent, its visible pixels and (from the same ray tests,
before the depth test) the pixels it would cover unoccluded: the nuScenes visibility fraction.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from .assets import TEX_BAND, TEX_FACADE, TEX_STRIPES
from .raycast import face_normals_global, slab_hits, to_box_frame
from .rig import IMAGE_H, IMAGE_W
from .world import CROSS_HALF, CURB_HALF, SIDEWALK_HALF, BoxArray, World, place_local

GROUND, SCENERY = -2, -1  # owner codes besides agent indices
MAX_RANGE_M = 250.0
SKY_ZENITH = np.array([0.42, 0.58, 0.82])
HAZE = np.array([0.78, 0.81, 0.84])
AMBIENT, DIFFUSE = 0.5, 0.6


@dataclass(frozen=True)
class CameraModel:
    """Pinhole camera at the internal render resolution (pixel-centre-consistent scaling)."""

    K_full: np.ndarray  # 3x3 intrinsics of the 1600x900 image
    scale: float

    @property
    def size(self) -> tuple[int, int]:
        return int(round(IMAGE_W * self.scale)), int(round(IMAGE_H * self.scale))

    def rays_cam(self) -> np.ndarray:
        """(h, w, 3) ray directions (unit) through the internal pixel centres, camera frame."""
        w, h = self.size
        # Internal pixel centre in full-res pixels.
        u_full = (np.arange(w) + 0.5) / self.scale - 0.5
        v_full = (np.arange(h) + 0.5) / self.scale - 0.5
        fx, fy, cx, cy = self.K_full[0, 0], self.K_full[1, 1], self.K_full[0, 2], self.K_full[1, 2]
        x = np.broadcast_to(((u_full - cx) / fx)[None, :], (h, w))
        y = np.broadcast_to(((v_full - cy) / fy)[:, None], (h, w))
        d = np.stack([x, y, np.ones((h, w))], -1)
        return (d / np.linalg.norm(d, axis=-1, keepdims=True)).astype(np.float32)

    def project(self, xyz_cam: np.ndarray) -> np.ndarray:
        """Camera-frame points (..., 3) -> internal pixel coordinates (..., 2) (z > 0 assumed)."""
        uv_full = (xyz_cam[..., :2] / xyz_cam[..., 2:3] * self.K_full[[0, 1], [0, 1]]
                   + self.K_full[[0, 1], [2, 2]])
        return (uv_full + 0.5) * self.scale - 0.5


@lru_cache(maxsize=1)
def _noise_tiles() -> tuple[np.ndarray, np.ndarray]:
    """Fixed fine and coarse noise tiles (512x512, zero mean) for ground texture."""
    rng = np.random.default_rng(12345)

    def periodic_blur(sigma: float) -> np.ndarray:
        # Blur a 3x3 tiling and keep the centre, so the tile stays seamless when repeated.
        noise = rng.normal(0, 1, (512, 512)).astype(np.float32)
        big = cv2.GaussianBlur(np.tile(noise, (3, 3)), (0, 0), sigma)
        tile = big[512:1024, 512:1024]
        return tile / tile.std()
    return periodic_blur(1.0), periodic_blur(6.0)


def _sample_tile(tile: np.ndarray, xy: np.ndarray, cell_m: float) -> np.ndarray:
    ij = np.floor(xy / cell_m).astype(np.int64) & 511
    return tile[ij[:, 1], ij[:, 0]]


def ground_colour(world: World, xy: np.ndarray) -> np.ndarray:
    """Linear RGB (M, 3) of the ground at global xy (M, 2): asphalt, lane marks, curbs,
    sidewalks and grass. Procedural, so it is exact at any distance and resolution."""
    s, d = world.road.to_road(xy)
    along, lateral = world.cross.coords(xy)
    ad, a_along, a_lat = np.abs(d), np.abs(along), np.abs(lateral)
    in_cross = (a_lat < CROSS_HALF) & (a_along < 400.0)
    in_junction = in_cross & (ad < CURB_HALF)
    fine, coarse = _noise_tiles()
    n_fine = _sample_tile(fine, xy, 0.08)
    n_coarse = _sample_tile(coarse, xy, 0.9)

    col = np.empty((len(xy), 3), np.float32)
    grass = np.array([0.22, 0.32, 0.13]) + np.outer(np.clip(n_coarse, -2, 2), [0.06, 0.03, 0.03])
    col[:] = grass * (1 + 0.12 * n_fine[:, None])
    sidewalk = (((ad >= CURB_HALF) & (ad < SIDEWALK_HALF))
                | ((a_lat >= CROSS_HALF) & (a_lat < CROSS_HALF + 3.5)))
    sidewalk &= ~((ad < CURB_HALF) | in_cross)
    main_walk = (ad >= CURB_HALF) & (ad < SIDEWALK_HALF)
    u = np.where(main_walk, s, along)  # paving joints run across each sidewalk
    groove = np.abs((u % 1.5) - 0.75) > 0.72
    col[sidewalk] = np.array([0.56, 0.55, 0.51]) * (1 + 0.05 * n_fine[sidewalk, None]) \
        * np.where(groove[sidewalk], 0.8, 1.0)[:, None]
    curb = sidewalk & np.where(main_walk, ad - CURB_HALF < 0.25, a_lat - CROSS_HALF < 0.25)
    col[curb] = (0.7, 0.7, 0.68)
    road = (ad < CURB_HALF) | in_cross
    asphalt = ((0.27 + 0.025 * n_coarse[road] + 0.02 * n_fine[road])[:, None]
               * np.array([1.0, 1.0, 1.04]))
    col[road] = asphalt

    # Markings: main road (suppressed inside the junction), then the cross street.
    main = (ad < CURB_HALF) & ~in_junction
    white = main & (np.abs(ad - 3.5) < 0.075) & ((s % 9.0) < 3.0)          # dashed lane dividers
    white |= main & (np.abs(ad - 7.0) < 0.09)                               # solid edge lines
    yellow = main & (np.abs(ad - 0.15) < 0.06)                              # double centre line
    cross_road = in_cross & ~in_junction
    white |= cross_road & (a_lat < 0.08) & ((along % 9.0) < 3.0)
    white |= (cross_road & (np.abs(a_along - CURB_HALF - 2.0) < 0.25)
              & (lateral * np.sign(along) < 0))  # stop lines
    col[white] = np.array([0.85, 0.85, 0.82]) * (1 + 0.04 * n_fine[white, None])
    col[yellow] = (0.8, 0.62, 0.12)
    return col


def _texture(colour: np.ndarray, boxes: BoxArray, i: int, p_box: np.ndarray,
             face: np.ndarray) -> np.ndarray:
    """Apply part i's procedural texture to per-pixel colours given box-frame hit points."""
    kind = boxes.tex[i]
    half = boxes.half[i]
    p0, p1 = boxes.tex_param[i]
    vertical = face < 4
    if kind == TEX_BAND:  # window band (bus, truck cab) or the cone's reflective band
        frac_z = (p_box[:, 2] + half[2]) / (2 * half[2])
        mask = vertical & (frac_z > p0) & (frac_z < p1)
    elif kind == TEX_STRIPES:  # red/white along the long horizontal axis
        u = p_box[:, 1] if half[1] > half[0] else p_box[:, 0]
        mask = (np.floor(u / p0) % 2) == 0
    elif kind == TEX_FACADE:  # window grid on the walls, none on the ground floor's bottom
        u = np.where(face < 2, p_box[:, 1], p_box[:, 0])
        z = p_box[:, 2] + half[2]
        mask = (vertical & ((u / p0) % 1.0 > 0.25) & ((u / p0) % 1.0 < 0.75)
                & ((z / p1) % 1.0 > 0.35) & ((z / p1) % 1.0 < 0.85) & (z > 1.0))
    else:
        return colour
    colour[mask] = boxes.tex_rgb[i]
    return colour


@dataclass
class CameraRender:
    image_bgr: np.ndarray    # (900, 1600, 3) uint8, ready for JPEG
    owner: np.ndarray        # (h, w) int32 internal resolution: agent index, SCENERY or GROUND
    visible_px: np.ndarray   # (A,) pixels where each agent is the nearest surface
    unoccluded_px: np.ndarray  # (A,) pixels each agent would cover with nothing else drawn


@dataclass
class _Canvas:
    """The per-pixel buffers render_camera draws into."""

    dirs: np.ndarray      # (h, w, 3) world-frame ray directions
    depth: np.ndarray     # (h, w) nearest surface distance
    colour: np.ndarray    # (h, w, 3) linear colour
    owner: np.ndarray     # (h, w) agent index, SCENERY or GROUND
    shadowed: np.ndarray  # (h, w) under a contact-shadow decal


def _ground_and_sky(world: World, dirs: np.ndarray, origin: np.ndarray) -> _Canvas:
    """The analytic ground plane and the sky, before any box is drawn."""
    h, w = dirs.shape[:2]
    # Ground plane: t = -z0 / dz for downward rays.
    dz = dirs[..., 2]
    with np.errstate(divide="ignore"):
        t_ground = np.where(dz < -1e-4, -origin[2] / dz, np.inf).astype(np.float32)
    t_ground[t_ground > MAX_RANGE_M] = np.inf
    depth = t_ground.copy()
    colour = np.empty((h, w, 3), np.float32)
    on_ground = np.isfinite(t_ground)
    g_xy = origin[:2] + dirs[on_ground][:, :2].astype(np.float64) * t_ground[on_ground][:, None]
    colour[on_ground] = ground_colour(world, g_xy)
    elevation = np.clip(dz[~on_ground], 0, 1)[:, None]
    colour[~on_ground] = HAZE + (SKY_ZENITH - HAZE) * np.sqrt(elevation)
    return _Canvas(dirs=dirs, depth=depth, colour=colour,
                   owner=np.full((h, w), GROUND, np.int32), shadowed=np.zeros((h, w), bool))


def _cull_and_project(world: World, boxes: BoxArray, world_T_cam: np.ndarray,
                      cam: CameraModel) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cull boxes by range and view, then get each one's projected corners; returns (kept box
    indices, corners behind the near plane (K, 8), corner pixels (K, 8, 2), face shade (K, 6))."""
    cam_T_world = np.linalg.inv(world_T_cam)
    centers_cam = boxes.center @ cam_T_world[:3, :3].T + cam_T_world[:3, 3]
    radius = np.linalg.norm(boxes.half, axis=-1)
    keep = ((centers_cam[:, 2] > -radius)
            & (np.linalg.norm(centers_cam, axis=-1) < MAX_RANGE_M + radius))
    keep &= (np.abs(centers_cam[:, 0]) - radius
             < centers_cam[:, 2] * (IMAGE_W / cam.K_full[0, 0]) + 1.0)
    idx = np.nonzero(keep)[0]
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float)
    local = (signs[None] * boxes.half[idx, None, :]).reshape(-1, 3)
    corners = place_local(local, np.repeat(boxes.center[idx, :2], 8, 0),
                          np.repeat(boxes.yaw[idx], 8))
    corners[:, 2] += np.repeat(boxes.center[idx, 2], 8)
    corners = corners.reshape(-1, 8, 3)
    corners_cam = corners @ cam_T_world[:3, :3].T + cam_T_world[:3, 3]
    near_plane = corners_cam[..., 2] < 0.05
    uv = cam.project(np.where(near_plane[..., None], 1.0, corners_cam))
    light = (np.clip(np.stack([face_normals_global(yaw) for yaw in boxes.yaw[idx]])
                     @ world.sun_dir, 0, None)
             if len(idx) else np.zeros((0, 6)))
    shade = AMBIENT + DIFFUSE * light  # (K, 6)
    shade[:, 4] += 0.1  # open sky above: roofs get extra skylight
    return idx, near_plane, uv, shade


def _draw_box(canvas: _Canvas, boxes: BoxArray, i: int, origin: np.ndarray,
              rect: tuple[int, int, int, int], shade: np.ndarray,
              covered: dict[int, list[np.ndarray]]) -> None:
    """Ray-test box i against the pixel rectangle `rect` and draw its nearer pixels."""
    u0, v0, u1, v1 = rect
    w = canvas.depth.shape[1]
    rect_dirs = canvas.dirs[v0:v1, u0:u1].reshape(-1, 3)
    o_box = to_box_frame(origin, boxes.center[i], boxes.yaw[i])
    d_box = to_box_frame(rect_dirs, boxes.center[i], boxes.yaw[i], is_direction=True)
    hit, t, face = slab_hits(o_box, d_box, boxes.half[i].astype(np.float32))
    rect_depth = canvas.depth[v0:v1, u0:u1].reshape(-1)
    win = hit & (t < rect_depth)
    rows, cols = np.divmod(np.nonzero(win)[0], u1 - u0)
    rows, cols = rows + v0, cols + u0
    if boxes.decal[i]:
        canvas.shadowed[rows, cols] = True
        return
    if boxes.owner[i] >= 0:
        all_rows, all_cols = np.divmod(np.nonzero(hit)[0], u1 - u0)
        covered.setdefault(int(boxes.owner[i]), []).append((all_rows + v0) * w + all_cols + u0)
    if not win.any():
        return
    f = face[win]
    px_colour = boxes.face_rgb[i][f].astype(np.float32)
    if boxes.tex[i]:
        p_box = o_box + t[win, None] * d_box[win]
        px_colour = _texture(px_colour, boxes, i, p_box, f)
    canvas.colour[rows, cols] = px_colour * shade[f][:, None]
    canvas.depth[rows, cols] = t[win]
    canvas.owner[rows, cols] = boxes.owner[i] if boxes.owner[i] >= 0 else SCENERY


def _box_rect(uv: np.ndarray, near_plane: np.ndarray, h: int,
              w: int) -> tuple[int, int, int, int] | None:
    """The pixel rectangle a box's projected corners cover, or None when it covers none."""
    if near_plane.all():
        return None
    if near_plane.any():  # straddles the camera plane: test the whole image
        u0, v0, u1, v1 = 0, 0, w, h
    else:
        u0, v0 = np.floor(uv.min(0)).astype(int)
        u1, v1 = np.ceil(uv.max(0)).astype(int) + 1
        u0, v0, u1, v1 = max(u0, 0), max(v0, 0), min(u1, w), min(v1, h)
    if u0 >= u1 or v0 >= v1:
        return None
    return u0, v0, u1, v1


def _shadows_and_fog(canvas: _Canvas) -> None:
    colour, depth = canvas.colour, canvas.depth
    colour[canvas.shadowed & (canvas.owner == GROUND)] *= 0.45
    # Aerial perspective: distant surfaces fade towards the horizon colour.
    finite = np.isfinite(depth)
    fog = 1.0 - np.exp(-depth[finite] / 350.0)
    colour[finite] = colour[finite] * (1 - fog[:, None]) + HAZE * fog[:, None]


def render_camera(world: World, boxes: BoxArray, n_agents: int, world_T_cam: np.ndarray,
                  cam: CameraModel, rays_cam: np.ndarray,
                  exposure_rng: np.random.Generator) -> CameraRender:
    """Render one camera image of `boxes` (and the ground of `world`) seen from world_T_cam."""
    h, w = rays_cam.shape[:2]
    R, origin = world_T_cam[:3, :3], world_T_cam[:3, 3]
    dirs = (rays_cam.reshape(-1, 3) @ R.T.astype(np.float32)).reshape(h, w, 3)
    canvas = _ground_and_sky(world, dirs, origin)
    idx, near_plane, uv, shade = _cull_and_project(world, boxes, world_T_cam, cam)
    covered: dict[int, list[np.ndarray]] = {}
    # Decals (contact shadows) first, so they only darken the ground drawn before objects.
    order = np.concatenate([np.nonzero(boxes.decal[idx])[0], np.nonzero(~boxes.decal[idx])[0]])
    for k in order:
        rect = _box_rect(uv[k], near_plane[k], h, w)
        if rect is not None:
            _draw_box(canvas, boxes, idx[k], origin, rect, shade[k], covered)
    _shadows_and_fog(canvas)

    owner = canvas.owner
    visible = np.bincount(owner[owner >= 0].ravel(), minlength=n_agents)[:n_agents]
    unoccluded = np.zeros(n_agents, np.int64)
    for agent, flat in covered.items():
        unoccluded[agent] = len(np.unique(np.concatenate(flat)))
    image = _expose(canvas.colour, exposure_rng)
    return CameraRender(image_bgr=image, owner=owner, visible_px=visible, unoccluded_px=unoccluded)


@lru_cache(maxsize=4)
def _vignette(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r2 = ((x - w / 2) / (w / 2)) ** 2 + ((y - h / 2) / (h / 2)) ** 2
    return (1.0 - 0.12 * r2)[..., None]


def _expose(colour: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-camera exposure and white balance, vignetting, sensor noise, gamma; then upsample to
    1600x900 and return BGR uint8."""
    h, w = colour.shape[:2]
    gain = rng.uniform(0.8, 1.2) * rng.uniform(0.95, 1.05, 3).astype(np.float32)
    linear = np.clip(colour * gain * _vignette(h, w), 0.0, 1.0)
    srgb = linear ** (1 / 2.2) * 255.0 + rng.normal(0.0, 2.5, (h, w, 1)).astype(np.float32)
    small = np.clip(srgb, 0, 255).astype(np.uint8)[..., ::-1]
    if (w, h) != (IMAGE_W, IMAGE_H):
        small = cv2.resize(small, (IMAGE_W, IMAGE_H), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(small)
