"""Large VALUEs never make a response too big to send: pages end early, BatchGet says why."""

from __future__ import annotations

import json
from pathlib import Path

import grpc

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from tests.e2e.helpers import MiB, expect_error
from tests.serverproc import ServerProcess


async def test_lists_batches_and_manifests_of_big_values(server: ServerProcess) -> None:
    # A default client: 4 MiB receive limit, so the server's pages must fit that too.
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.AssetServiceStub(channel)
        ids = []
        for i in range(6):
            value = pb.Value(data=bytes([i]) * (3 * MiB))
            request = pb.CreateValueAssetRequest(label=f"big{i}", value=value, tags=["big"])
            ids.append((await stub.CreateValueAsset(request, timeout=30)).asset.id)

        listed, token, pages = [], "", 0
        while True:
            page = await stub.ListAssets(
                pb.ListAssetsRequest(tags=["big"], page_size=1000, page_token=token)
            )
            pages += 1
            listed += [a.id for a in page.assets]
            assert all(len(a.value.data) == 3 * MiB for a in page.assets)
            token = page.next_page_token
            if not token:
                break
        assert listed == ids and pages >= 3, "pages end early instead of failing to send"

        await expect_error(
            stub.BatchGetAssets(pb.BatchGetAssetsRequest(asset_ids=ids)),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "ask for fewer ids",
        )
        one = await stub.BatchGetAssets(pb.BatchGetAssetsRequest(asset_ids=ids[:1]))
        assert one.assets[0].id == ids[0]

        mappings = {f"in{i}": asset_id for i, asset_id in enumerate(ids)}
        manifest = await stub.GetManifest(pb.GetManifestRequest(asset_mappings=mappings))
        body = json.loads(Path(manifest.manifest_path).read_text())
        for i in range(6):
            assert Path(body["inputs"][f"in{i}"]).read_bytes() == bytes([i]) * (3 * MiB)
