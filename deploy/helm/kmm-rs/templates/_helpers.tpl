{{/*
The image every container runs, and the controller's KMM_SIGNER_IMAGE:
repository@digest when a digest is set, else repository:tag.
*/}}
{{- define "kmm-rs.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}
{{- end }}

{{/*
Labels of every object's metadata: deploy/base's app.kubernetes.io/part-of
plus Helm's. Never in selectors or Pod templates, so those stay deploy/'s and
a chart version bump alone rolls no Pod.
*/}}
{{- define "kmm-rs.labels" -}}
app.kubernetes.io/part-of: kmm-rs
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service | quote }}
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}

{{/*
The objects of one deploy/ file, read through a symlink in files/ (one
source of truth), rendered as kustomize's `namespace:` and `labels:` of
deploy/base render them: a namespaced object and the ServiceAccount subjects
of a binding go to the release namespace, and the common labels are added.
Argument: dict with
  root         the top context ($)
  path         the file, e.g. files/base/rbac/agent.yaml
  name         a new metadata.name (optional; for a one-object file)
  labels       extra metadata labels (optional)
  annotations  extra metadata annotations (optional)
A missing or empty file fails the render: a broken symlink must not
silently drop objects.
fromYaml reads YAML 1.1: an unquoted y/yes/no/on/off value would turn into
a boolean here and stay a string in kustomize's render, so quote such
values in deploy/ (tests/tests/helm_chart.rs shows any such difference).
*/}}
{{- define "kmm-rs.fromFile" -}}
{{- $root := .root -}}
{{- $content := $root.Files.Get .path -}}
{{- if not $content -}}
{{- fail (printf "chart file %s is missing or empty (a symlink into deploy/ that does not resolve?)" .path) -}}
{{- end -}}
{{- $labels := merge (dict) (.labels | default dict) (include "kmm-rs.labels" $root | fromYaml) -}}
{{- $annotations := .annotations | default dict -}}
{{- range $doc := regexSplit "(?m)^---[ \t]*$" $content -1 }}
{{- $obj := fromYaml $doc }}
{{- if hasKey $obj "Error" }}
{{- fail (printf "%s: %s" $.path $obj.Error) }}
{{- end }}
{{- if $obj }}
{{- $meta := $obj.metadata }}
{{- if hasKey $meta "namespace" }}
{{- $_ := set $meta "namespace" $root.Release.Namespace }}
{{- end }}
{{- with $.name }}
{{- $_ := set $meta "name" . }}
{{- end }}
{{- $_ := set $meta "labels" (merge (dict) ($meta.labels | default dict) $labels) }}
{{- if $annotations }}
{{- $_ := set $meta "annotations" (merge (dict) ($meta.annotations | default dict) $annotations) }}
{{- end }}
{{- if has $obj.kind (list "RoleBinding" "ClusterRoleBinding") }}
{{- range $obj.subjects }}
{{- if and (eq .kind "ServiceAccount") (hasKey . "namespace") }}
{{- $_ := set . "namespace" $root.Release.Namespace }}
{{- end }}
{{- end }}
{{- end }}
---
{{ toYaml $obj }}
{{- end }}
{{- end }}
{{- end }}
