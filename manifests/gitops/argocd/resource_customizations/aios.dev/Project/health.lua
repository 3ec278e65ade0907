-- Argo CD health of an AIOS Project (aios.dev/v1alpha1), read from what the operator
-- reports: status.observedGeneration and the kstatus conditions Ready, Reconciling and
-- Stalled. Written for Argo CD's Lua (gopher-lua, Lua 5.1); `obj` is the live Project.

local hs = {}

local function find(conditions, wanted)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == wanted then
      return c
    end
  end
  return nil
end

local function holds(c)
  return c ~= nil and c.status == "True"
end

-- The condition's message, else its reason, else `fallback`.
local function says(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  if c ~= nil and c.reason ~= nil and c.reason ~= "" then
    return c.reason
  end
  return fallback
end

local status = obj.status
local generation = obj.metadata.generation
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the AIOS operator to report the Project's status"
  return hs
end
if status.observedGeneration == nil or (generation ~= nil and status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the AIOS operator to observe generation " .. tostring(generation)
  return hs
end

local ready = find(status.conditions, "Ready")
local reconciling = find(status.conditions, "Reconciling")
local stalled = find(status.conditions, "Stalled")
if ready == nil and reconciling == nil and stalled == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the AIOS operator to report the Ready, Reconciling and Stalled conditions"
  return hs
end

if holds(stalled) then
  -- Failed (TaskFailed, PlanInvalid, VerificationFailed, ...) or BudgetExceeded: a
  -- person has to act.
  hs.status = "Degraded"
  hs.message = says(stalled, "Stalled")
  return hs
end
if status.phase == "Suspended" or (ready ~= nil and ready.reason == "Suspended") then
  hs.status = "Suspended"
  hs.message = says(ready, "Suspended: spec.suspend is true")
  return hs
end
if holds(ready) then
  hs.status = "Healthy"
  hs.message = says(ready, "Succeeded")
  return hs
end

hs.status = "Progressing"
if holds(reconciling) then
  hs.message = says(reconciling, "Reconciling")
else
  hs.message = says(find(status.conditions, "Succeeded"), says(ready, tostring(status.phase)))
end
return hs
