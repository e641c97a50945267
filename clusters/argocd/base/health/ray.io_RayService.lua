-- Argo CD health for ray.io/RayService, from the status KubeRay (>= v1.3) writes:
--   Healthy      the Ready condition is True (Serve endpoints > 0);
--   Degraded     Ready is False for a reason KubeRay will not recover from without a spec change:
--                InitializingTimeout (not ready within the ray.io/initializing-timeout annotation;
--                KubeRay stops retrying) or ValidationFailed (the spec was rejected);
--   Progressing  everything else: no status yet, a generation not yet observed, Ready False/Unknown while
--                the cluster starts, Serve deploys or an upgrade is under way.
local degraded_reasons = { InitializingTimeout = true, ValidationFailed = true }
local hs = { status = "Progressing", message = "Waiting for KubeRay to report the RayService status" }

if obj.status == nil then
  return hs
end

local generation = obj.metadata and obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and observed ~= nil and observed < generation then
  hs.message = "Waiting for KubeRay to observe generation " .. tostring(generation)
  return hs
end

if obj.status.conditions ~= nil then
  for _, condition in ipairs(obj.status.conditions) do
    if condition.type == "Ready" then
      hs.message = condition.message or condition.reason or ""
      if condition.status == "True" then
        hs.status = "Healthy"
      elseif condition.status == "False" and degraded_reasons[condition.reason] then
        hs.status = "Degraded"
      end
      return hs
    end
  end
end

hs.message = "Waiting for the Ready condition"
return hs
