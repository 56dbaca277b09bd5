"""The object store client on a real S3-compatible store (SeaweedFS): many objects at a time, and each failure told
apart: an object that is missing (its job fails), a store that does not answer (nothing is lost: try again)."""

import uuid

import pytest

from service.imagestore import ObjectLocation, ObjectStore, ObjectStoreUnavailable, ObjectUnreadable, TooManyObjects
from tests.objectstore import SeaweedFS
from tests.processes import free_port


@pytest.fixture
def store(object_store: SeaweedFS) -> ObjectStore:
    return ObjectStore(endpoint=object_store.endpoint)


@pytest.fixture
def folder() -> ObjectLocation:
    return ObjectLocation("pneuradnet-tests", f"store-{uuid.uuid4().hex}/")


def test_objects_written_together_are_read_together_and_a_missing_one_says_so(store: ObjectStore,
                                                                               folder: ObjectLocation):
    objects = [(folder.child(f"{n}.jpeg"), f"image {n}".encode() * 1000) for n in range(20)]
    store.put_many(objects)

    read = store.get_many([location for location, _ in objects] + [folder.child("never-written.jpeg")])

    assert read[:20] == [data for _, data in objects]
    assert isinstance(read[20], ObjectUnreadable)
    assert str(read[20]) == f"the object {folder.child('never-written.jpeg')} does not exist"


def test_a_prefix_lists_its_objects_in_order_up_to_a_limit(store: ObjectStore, folder: ObjectLocation):
    store.put_many([(folder.child(f"scans/{n:02d}.jpeg"), b"x") for n in range(12)] + [(folder.child("other"), b"x")])

    listed = store.list_under(folder.child("scans/"), limit=12)

    assert [location.key.rsplit("/", 1)[1] for location in listed] == [f"{n:02d}.jpeg" for n in range(12)]
    with pytest.raises(TooManyObjects):
        store.list_under(folder.child("scans/"), limit=11)


def test_deleted_objects_are_gone_and_deleting_again_is_no_error(store: ObjectStore, folder: ObjectLocation):
    locations = [folder.child(f"{n}") for n in range(3)]
    store.put_many([(location, b"x") for location in locations])

    store.delete_many(locations)
    store.delete_many(locations)

    assert all(isinstance(outcome, ObjectUnreadable) for outcome in store.get_many(locations))


def test_a_store_that_does_not_answer_is_told_apart_from_a_missing_object(monkeypatch: pytest.MonkeyPatch):
    nowhere = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", nowhere)
    store = ObjectStore(endpoint=nowhere)

    with pytest.raises(ObjectStoreUnavailable, match="does not answer"):
        store.get_many([ObjectLocation("any", "image.jpeg")])
    with pytest.raises(ObjectStoreUnavailable):
        store.put_many([(ObjectLocation("any", "image.jpeg"), b"x")])


def test_locations_are_s3_uris():
    location = ObjectLocation.parse("s3://archive/2026/ward-7/a.dcm")
    assert (location.bucket, location.key, str(location)) == ("archive", "2026/ward-7/a.dcm", "s3://archive/2026/ward-7/a.dcm")
    assert location.within(ObjectLocation.parse("s3://archive/2026/"))
    assert not location.within(ObjectLocation.parse("s3://archive/2025/"))
    assert not location.within(ObjectLocation.parse("s3://other/"))
    for wrong in ("archive/a.dcm", "s3:///a.dcm", "https://archive/a.dcm"):
        with pytest.raises(ValueError):
            ObjectLocation.parse(wrong)
