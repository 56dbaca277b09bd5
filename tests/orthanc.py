"""A real PACS for tests: Debian's Orthanc (`/usr/sbin/Orthanc`, installed by the test command with its DICOMweb
plug-in), on loopback ports of its own, storing in a folder of the caller's, with no authentication, and knowing
the service's calling AE title as a modality. It can be stopped and started again on the same ports and storage
(a PACS that goes away and comes back)."""

import json
import subprocess
from pathlib import Path

import httpx

from tests.processes import free_port, wait_until

ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
AE_TITLE = "ORTHANCTEST"

STARTUP_TIMEOUT = 30.0


class Orthanc:
    def __init__(self, folder: Path, *, calling_ae_title: str = "PNEURADNET") -> None:
        self.folder = folder
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.stow_url = f"{self.url}/dicom-web/studies"
        self.dicom_to = f"{AE_TITLE}@127.0.0.1:{self.dicom_port}"
        self._calling = calling_ae_title
        self._process: subprocess.Popen | None = None

    def start(self) -> None:
        config = self.folder / "orthanc.json"
        config.write_text(json.dumps({
            "Name": "pneuradnet-tests", "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "storage"), "DicomAet": AE_TITLE, "DicomPort": self.dicom_port,
            "HttpPort": self.http_port, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "DicomCheckCalledAet": True, "DicomAlwaysAllowStore": False,
            "DicomModalities": {"pneuradnet": [self._calling, "127.0.0.1", 11112]},
            "Plugins": [DICOMWEB_PLUGIN], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "HttpDescribeErrors": True, "StableAge": 1,
        }))
        with (self.folder / "orthanc.log").open("ab") as log:
            self._process = subprocess.Popen([ORTHANC, str(config)], stdout=log, stderr=subprocess.STDOUT,
                                             start_new_session=True)
        wait_until(self.answers, timeout=STARTUP_TIMEOUT, interval=0.2, what="Orthanc to answer")

    def answers(self) -> bool:
        if self._process is not None and self._process.poll() is not None:
            raise RuntimeError(f"Orthanc exited:\n{(self.folder / 'orthanc.log').read_text()[-3000:]}")
        try:
            return httpx.get(f"{self.url}/system", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def get(self, path: str) -> object:
        response = httpx.get(f"{self.url}{path}", timeout=10)
        response.raise_for_status()
        return response.json()

    def instance_file(self, orthanc_id: str) -> bytes:
        response = httpx.get(f"{self.url}/instances/{orthanc_id}/file", timeout=10)
        response.raise_for_status()
        return response.content

    def study_id(self, study_instance_uid: str) -> str | None:
        """Orthanc's id of the study with this StudyInstanceUID; None if it holds none."""
        found = httpx.post(f"{self.url}/tools/lookup", content=study_instance_uid, timeout=10).json()
        return next((item["ID"] for item in found if item["Type"] == "Study"), None)

    def wipe(self) -> None:
        for study in self.get("/studies"):  # type: ignore[attr-defined]
            httpx.delete(f"{self.url}/studies/{study}", timeout=10).raise_for_status()
