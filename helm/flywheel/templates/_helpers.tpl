{{/* Names, labels and images shared by every template. */}}

{{- define "flywheel.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "flywheel.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "flywheel.component" -}}
{{- printf "%s-%s" (include "flywheel.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "flywheel.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "flywheel.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: flywheel
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "gateway") */}}
{{- define "flywheel.selector" -}}
app.kubernetes.io/name: {{ include "flywheel.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "flywheel.componentLabels" -}}
{{ include "flywheel.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* An image reference: (dict "image" .Values.gateway.image "root" $) */}}
{{- define "flywheel.image" -}}
{{- $tag := .image.tag | default .root.Chart.AppVersion -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "flywheel.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "flywheel.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "flywheel.secretName" -}}
{{- default (printf "%s-keys" (include "flywheel.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}

{{- define "flywheel.sharedClaim" -}}
{{- default (printf "%s-shared" (include "flywheel.fullname" .)) .Values.shared.existingClaim -}}
{{- end -}}

{{- define "flywheel.gatewayUrl" -}}
{{- printf "http://%s:%v" (include "flywheel.component" (dict "root" . "component" "gateway")) .Values.gateway.service.port -}}
{{- end -}}

{{/* The gateway's config file: the chart's part, with .Values.config merged over it. */}}
{{- define "flywheel.config" -}}
{{- $shared := .Values.shared.mountPath -}}
{{- $cfg := dict
  "listen" (dict "host" "0.0.0.0" "port" 8000)
  "data_dir" "/var/lib/flywheel"
  "auth" (dict
    "api_keys" (list (dict "key" "${FLYWHEEL_API_KEY}" "name" .Values.auth.apiKeyName "tenant" .Values.auth.apiKeyTenant))
    "admin_keys" (list (dict "key" "${FLYWHEEL_ADMIN_KEY}" "name" .Values.auth.adminKeyName)))
  "archive" (dict
    "enabled" .Values.archive.inGateway
    "url" (default (printf "%s/archive" $shared) .Values.archive.url))
  "retrain" (dict
    "dataset_dir" (printf "%s/datasets" $shared)
    "gateway_url" (include "flywheel.gatewayUrl" .)
    "gateway_key" "${FLYWHEEL_API_KEY:-}"
    "admin_key" "${FLYWHEEL_ADMIN_KEY:-}"
    "local" (dict "adapter_dir" (printf "%s/adapters" $shared) "base_model" .Values.vllm.model "upstream" .Values.vllm.upstreamName))
-}}
{{- if .Values.vllm.enabled -}}
{{- $vllm := dict "kind" "vllm" "base_url" (printf "http://%s:%v/v1" (include "flywheel.component" (dict "root" . "component" "vllm")) .Values.vllm.port) "dns_replicas" true -}}
{{- $_ := set $cfg "upstreams" (dict .Values.vllm.upstreamName $vllm) -}}
{{- end -}}
{{- $cfg = mergeOverwrite $cfg (deepCopy .Values.config) -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* Environment every Flywheel container gets: Redis, keys, the id secret. */}}
{{- define "flywheel.env" -}}
- name: FLYWHEEL_REDIS_URL
{{- if .Values.redis.enabled }}
  value: {{ printf "redis://%s:6379/0" (include "flywheel.component" (dict "root" . "component" "redis")) | quote }}
{{- else if .Values.redis.external.existingSecret }}
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.external.existingSecret }}
      key: {{ .Values.redis.external.existingSecretKey }}
{{- else }}
  value: {{ required "redis.external.url (or redis.external.existingSecret) is needed when redis.enabled is false" .Values.redis.external.url | quote }}
{{- end }}
{{- if .Values.redis.external.cluster }}
{{- if .Values.redis.enabled }}
{{- fail "redis.external.cluster needs redis.enabled: false (the release's own Redis is one server)" }}
{{- end }}
- name: FLYWHEEL_REDIS_CLUSTER
  value: "true"
{{- end }}
- name: FLYWHEEL_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "flywheel.secretName" . }}
      key: {{ .Values.auth.existingSecretKeys.apiKey }}
- name: FLYWHEEL_ADMIN_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "flywheel.secretName" . }}
      key: {{ .Values.auth.existingSecretKeys.adminKey }}
- name: FLYWHEEL_ID_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "flywheel.secretName" . }}
      key: {{ .Values.auth.existingSecretKeys.idSecret }}
- name: FLYWHEEL_CONFIG
  value: /etc/flywheel/flywheel.yaml
{{- end -}}

{{/* The restricted container security context every Flywheel and Redis container runs with. */}}
{{- define "flywheel.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
checkov's exceptions for a workload, each with its reason (annotations on its metadata):
(dict "image" .Values.gateway.image "secretEnv" true)
*/}}
{{- define "flywheel.checkovSkips" -}}
checkov.io/skip1: CKV_K8S_15=IfNotPresent is right for images pinned by tag or digest; Always would pull multi-GB images at every start
{{- if .secretEnv }}
checkov.io/skip2: CKV_K8S_35=Flywheel reads its keys from the environment (the config's ${ENV} references); they are never logged
{{- end }}
{{- if not .image.digest }}
checkov.io/skip3: CKV_K8S_43=pinned by an exact tag; set image.digest to pin by digest (production values do)
{{- end }}
{{- end -}}
