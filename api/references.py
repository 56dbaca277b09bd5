"""Submission by reference: images already in a bucket, named one by one or by a prefix, become a batch without
being uploaded (POST /jobs with a JSON body). Only the locations IMAGE_SOURCES lists may be named, and nothing is
stored for a request that names one elsewhere; the service reads the objects when their jobs run, and never
deletes them. A missing or unreadable object fails its own job."""

from pydantic import BaseModel, ConfigDict, Field, model_validator

from api.problems import ProblemError
from api.uploads import PlannedImage, UploadPlan
from service.imagestore import ObjectLocation, ObjectStore, ObjectStoreUnavailable, TooManyObjects
from service.jobstore import Upload

LIST_RETRY_AFTER = 5
"""Seconds a client is asked to wait when the object store did not answer the listing of its prefix."""


class ReferenceSubmission(BaseModel):
    """The JSON body of a submission by reference: `images` (s3:// locations) or `prefix` (every object under it)."""

    model_config = ConfigDict(extra="forbid")

    images: list[str] | None = Field(default=None, min_length=1, description="s3://bucket/key of each image")
    prefix: str | None = Field(default=None, description="s3://bucket/folder/: every object under it")

    @model_validator(mode="after")
    def _one_of_them(self) -> "ReferenceSubmission":
        if (self.images is None) == (self.prefix is None):
            raise ValueError("give either `images` (a list of s3:// locations) or `prefix` (one s3:// location)")
        return self


def plan_references(submission: ReferenceSubmission, *, sources: tuple[ObjectLocation, ...],
                    objects: ObjectStore | None, limit: int) -> UploadPlan:
    """The images a submission by reference names, each within IMAGE_SOURCES, at most `limit`; blocking (a prefix
    is listed): call it in a thread."""
    if not sources or objects is None:
        raise ProblemError(422, "references-disabled", "this service takes no images by reference: it is run "
                           "without IMAGE_SOURCES; upload the images instead")
    if submission.prefix is not None:
        prefix = _allowed(submission.prefix, sources)
        try:
            found = objects.list_under(prefix, limit=limit)
        except TooManyObjects as error:
            raise _too_many(limit) from error
        except ObjectStoreUnavailable as error:
            raise ProblemError(503, "image-store-unavailable", f"{prefix} could not be listed: {error}",
                               headers={"Retry-After": str(LIST_RETRY_AFTER)}) from error
        named = [(location.key[len(prefix.key):], location) for location in found]
    else:
        assert submission.images is not None
        if len(submission.images) > limit:
            raise _too_many(limit)
        named = [(location.key, location) for location in (_allowed(uri, sources) for uri in submission.images)]
    if not named:
        raise ProblemError(422, "no-files", f"no object under {submission.prefix}: nothing to classify")
    return UploadPlan(images=[_planned(name, location) for name, location in named])


def _allowed(uri: str, sources: tuple[ObjectLocation, ...]) -> ObjectLocation:
    try:
        location = ObjectLocation.parse(uri)
    except ValueError as error:
        raise ProblemError(422, "invalid-reference", f"{uri!r} is not an s3://bucket/key location") from error
    if not any(location.within(source) for source in sources):
        raise ProblemError(422, "reference-not-allowed", f"{location} is outside the locations this service may "
                           f"read (IMAGE_SOURCES: {', '.join(map(str, sources))}); nothing was stored")
    return location


def _planned(name: str, location: ObjectLocation) -> PlannedImage:
    uri = str(location)
    return PlannedImage(name, uri.encode(), lambda: Upload(filename=name, data=b"", location=uri), 0)


def _too_many(limit: int) -> ProblemError:
    return ProblemError(413, "too-many-files", f"more than {limit:,} images named in one submission "
                        "(MAX_REFERENCES); split them into several submissions")
