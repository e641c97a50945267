-- Argo CD (>= 1.8) does not assess the health of Application resources, so sync waves over Applications
-- (the KubeRay operator at -1, the support assistant at 0) would not wait for the operator to be up.
-- Report a child Application's own health instead, as Argo CD's health documentation describes.
local hs = { status = "Progressing", message = "" }
if obj.status ~= nil and obj.status.health ~= nil and obj.status.health.status ~= nil then
  hs.status = obj.status.health.status
  hs.message = obj.status.health.message or ""
end
return hs
