{{/* Names and labels shared by the templates. */}}

{{- define "dynamo-platform.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "dynamo-platform.labels" -}}
app.kubernetes.io/part-of: dynamo
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "dynamo-platform.operator" -}}
{{- index .Values "dynamo-operator" | toYaml -}}
{{- end -}}

{{- define "dynamo-platform.operatorName" -}}
{{- printf "%s-operator" (include "dynamo-platform.fullname" .) -}}
{{- end -}}

{{- define "dynamo-platform.etcdName" -}}
{{- printf "%s-etcd" (include "dynamo-platform.fullname" .) -}}
{{- end -}}

{{- define "dynamo-platform.natsName" -}}
{{- printf "%s-nats" (include "dynamo-platform.fullname" .) -}}
{{- end -}}

{{/* ETCD_ENDPOINTS the operator gives every graph. */}}
{{- define "dynamo-platform.etcdEndpoints" -}}
{{- if .Values.global.etcd.install -}}
{{- printf "http://%s.%s.svc.cluster.local:2379" (include "dynamo-platform.etcdName" .) .Release.Namespace -}}
{{- else -}}
{{- required "global.etcd.endpoints is required when global.etcd.install is false" .Values.global.etcd.endpoints -}}
{{- end -}}
{{- end -}}

{{/* NATS_SERVER the operator gives every graph. */}}
{{- define "dynamo-platform.natsServer" -}}
{{- if .Values.global.nats.install -}}
{{- printf "nats://%s.%s.svc.cluster.local:4222" (include "dynamo-platform.natsName" .) .Release.Namespace -}}
{{- else -}}
{{- required "global.nats.server is required when global.nats.install is false" .Values.global.nats.server -}}
{{- end -}}
{{- end -}}

{{- define "dynamo-platform.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
{{- if kindIs "string" . }}
  - name: {{ . | quote }}
{{- else }}
  - name: {{ .name | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}
