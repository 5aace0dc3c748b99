"""Static catalogue of regions, sizes and base images, with realistic values from the real API.

Only read here; the world model looks slugs up in it and the views embed the objects in droplets,
actions and images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

REGION_FEATURES = ["backups", "ipv6", "metadata", "install_agent", "storage", "image_transfer"]


@dataclass(frozen=True)
class Size:
    slug: str
    memory: int
    vcpus: int
    disk: int
    transfer: float
    price_monthly: float
    price_hourly: float
    description: str = "Basic"


SIZES: dict[str, Size] = {
    s.slug: s
    for s in [
        Size("s-1vcpu-512mb-10gb", 512, 1, 10, 0.5, 4.0, 0.00595),
        Size("s-1vcpu-1gb", 1024, 1, 25, 1.0, 6.0, 0.00893),
        Size("s-1vcpu-2gb", 2048, 1, 50, 2.0, 12.0, 0.01786),
        Size("s-2vcpu-2gb", 2048, 2, 60, 3.0, 18.0, 0.02679),
        Size("s-2vcpu-4gb", 4096, 2, 80, 4.0, 24.0, 0.03571),
        Size("s-4vcpu-8gb", 8192, 4, 160, 5.0, 48.0, 0.07143),
        Size("g-2vcpu-8gb", 8192, 2, 25, 4.0, 63.0, 0.09375, "General Purpose"),
    ]
}

REGIONS: dict[str, str] = {
    "nyc1": "New York 1",
    "nyc3": "New York 3",
    "sfo3": "San Francisco 3",
    "ams3": "Amsterdam 3",
    "fra1": "Frankfurt 1",
    "lon1": "London 1",
    "sgp1": "Singapore 1",
    "tor1": "Toronto 1",
    "blr1": "Bangalore 1",
    "syd1": "Sydney 1",
}
DEFAULT_REGION = "nyc3"


@dataclass(frozen=True)
class BaseImage:
    id: int
    slug: str
    name: str
    distribution: str
    min_disk_size: int
    size_gigabytes: float
    created_at: str


BASE_IMAGES: dict[str, BaseImage] = {
    i.slug: i
    for i in [
        BaseImage(
            160216920, "ubuntu-24-04-x64", "24.04 (LTS) x64", "Ubuntu", 7, 0.68, "2024-07-01T14:48:02Z"
        ),
        BaseImage(
            129211873, "ubuntu-22-04-x64", "22.04 (LTS) x64", "Ubuntu", 7, 0.53, "2023-03-16T19:47:01Z"
        ),
        BaseImage(141187155, "debian-12-x64", "12 x64", "Debian", 7, 0.58, "2023-10-11T20:08:10Z"),
        BaseImage(168102536, "fedora-40-x64", "40 x64", "Fedora", 7, 0.83, "2024-09-30T15:09:30Z"),
        BaseImage(146362484, "rockylinux-9-x64", "9 x64", "Rocky Linux", 10, 0.78, "2024-01-08T21:05:07Z"),
    ]
}
BASE_IMAGES_BY_ID: dict[int, BaseImage] = {i.id: i for i in BASE_IMAGES.values()}


def region_json(slug: str) -> dict[str, Any]:
    """The region object embedded in droplets and actions."""
    return {
        "name": REGIONS.get(slug, slug),
        "slug": slug,
        "features": list(REGION_FEATURES),
        "available": True,
        "sizes": list(SIZES),
    }


def size_json(slug: str) -> dict[str, Any]:
    """The size object embedded in droplets."""
    s = SIZES[slug]
    return {
        "slug": s.slug,
        "memory": s.memory,
        "vcpus": s.vcpus,
        "disk": s.disk,
        "transfer": s.transfer,
        "price_monthly": s.price_monthly,
        "price_hourly": s.price_hourly,
        "regions": sorted(REGIONS),
        "available": True,
        "description": s.description,
        "disk_info": [{"type": "local", "size": {"amount": s.disk, "unit": "gib"}}],
    }


def base_image_json(image: BaseImage) -> dict[str, Any]:
    """A public distribution image as ``GET /v2/images/{id}`` and droplets show it."""
    return {
        "id": image.id,
        "name": image.name,
        "distribution": image.distribution,
        "slug": image.slug,
        "public": True,
        "regions": sorted(REGIONS),
        "created_at": image.created_at,
        "min_disk_size": image.min_disk_size,
        "size_gigabytes": image.size_gigabytes,
        "type": "base",
        "description": f"{image.distribution} {image.name}",
        "tags": [],
        "status": "available",
        "error_message": "",
    }
