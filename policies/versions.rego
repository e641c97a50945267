# Versions: Ray in the image must be the Ray the operator and the Serve config expect, and what
# runs must be exactly what was tested.
package versions

import data.lib.k8s
import data.lib.ray

deny contains msg if {
	some im in ray.images
	im.ray
	version := object.get(im.doc.spec.rayClusterConfig, "rayVersion", "<unset>")
	not carries(im.image, version)
	msg := sprintf("[ray-version] %s: %s is %q, which carries Ray %s, but spec.rayClusterConfig.rayVersion is %q; a mismatched head/worker Ray fails to join the cluster or KubeRay misconfigures it; fix: build and pin an image tagged <app>-ray%s or change rayVersion", [k8s.ref(im.doc), im.where, im.image, found_version(im.image), version, version])
}

# (`not f(x) == v` is false when f(x) is undefined, so negate a whole predicate instead.)
carries(img, version) if ray.image_ray_version(img) == version

found_version(img) := v if {
	v := ray.image_ray_version(img)
} else := "<none>"

deny contains msg if {
	some im in ray.images
	parts := ray.image_parts(im.image)
	parts.tag == ""
	parts.digest == ""
	msg := sprintf("[image-tag] %s: %s is %q with no tag or digest (means :latest); fix: pin a version tag (and a digest in staging/prod)", [k8s.ref(im.doc), im.where, im.image])
}

deny contains msg if {
	some im in ray.images
	ray.image_parts(im.image).tag == "latest"
	msg := sprintf("[image-tag] %s: %s is %q; :latest changes under a running cluster and pods disagree after a reschedule; fix: pin a version tag", [k8s.ref(im.doc), im.where, im.image])
}

deny contains msg if {
	ray.strict_env
	some im in ray.images
	not pinned(im.image)
	msg := sprintf("[image-digest] %s: %s is %q without @sha256 digest in %s; a re-pushed tag would change what runs without a commit; fix: set `digest:` under images: in overlays/%s/kustomization.yaml (make promote does)", [k8s.ref(im.doc), im.where, im.image, ray.environment, ray.environment])
}

placeholder_digest := "sha256:0000000000000000000000000000000000000000000000000000000000000000"

warn contains msg if {
	ray.strict_env
	some doc in {im.doc | some im in ray.images}
	placeholders := {im.where | some im in ray.images; im.doc == doc; ray.image_parts(im.image).digest == placeholder_digest}
	count(placeholders) > 0
	msg := sprintf("[image-digest-placeholder] %s: %d image(s) still have the all-zero placeholder digest (%s); pods would fail with ImagePullBackOff; fix: `make promote` a released digest into overlays/%s/kustomization.yaml", [k8s.ref(doc), count(placeholders), concat(", ", sort(placeholders)), ray.environment])
}

pinned(img) if regex.match(`^sha256:[0-9a-f]{64}$`, ray.image_parts(img).digest)
